"""Checks that each profile of a compose file starts every service its services need.

Docker Compose refuses a profile in which a started service `depends_on` a service the profile
does not start ("depends on undefined service"), unless the dependency says `required: false`;
the Compose Specification's schema cannot see that, and no container engine runs in CI.

    python compose_profiles.py COMPOSE_FILE    # exit 1, naming each fault, if one is found
"""

import sys

import yaml


def started(services, profile):
    """Names of the services `--profile PROFILE` starts: its own and those without a profile."""
    return {name for name, service in services.items() if profile in service.get("profiles", [profile])}


def faults(compose):
    """One line per required dependency a profile does not start."""
    services = compose["services"]
    profiles = sorted({p for service in services.values() for p in service.get("profiles", [])})
    for profile in profiles:
        enabled = started(services, profile)
        for name in sorted(enabled):
            needs = services[name].get("depends_on", {})
            if isinstance(needs, list):
                needs = {need: {} for need in needs}
            for need, how in needs.items():
                if need not in enabled and how.get("required", True):
                    yield f"profile {profile}: {name} depends on {need}, which the profile does not start"


def main(path):
    with open(path) as file:
        found = list(faults(yaml.safe_load(file)))
    for fault in found:
        print(f"{path}: {fault}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
