"""A headless Label Studio for end-to-end tests.

    with LabelStudio() as ls:                  # starts LS 1.23 from .venv-ls on a free port, fresh data dir
        pid = ls.create_project("alps-e2e", LABEL_CONFIG)["id"]
        task_ids = ls.import_images(pid, paths)
        ml = ls.connect_ml_backend(pid, "http://127.0.0.1:9090")
        ls.retrieve_predictions(pid)
        ...                                    # ls.pat is the adapter's LABEL_STUDIO_API_KEY

Runs with the project venv's Python (needs only `requests`); Label Studio itself comes from
`.venv-ls` (scripts/bootstrap-label-studio.sh). One method per REST call, all authenticated with
`Authorization: Bearer <access JWT>` obtained from a personal access token (PAT).
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = ROOT / ".venv-ls"
# An empty, migrated database made by scripts/bootstrap-label-studio.sh. Copied into each fresh
# data directory, it spares Label Studio its ~150 migrations (one to three minutes per start).
TEMPLATE_DB = LS_VENV / "alps-template" / "label_studio.sqlite3"
USERNAME = "admin@example.com"
PASSWORD = "alps-e2e-password"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jwt_payload(token: str) -> dict:
    """The payload of a JWT, unverified (only to read `exp` and `token_type`)."""
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class ApiSession(requests.Session):
    """A requests.Session that prefixes LS's base URL to paths and adds a fresh Bearer token.

    `ls.api.get("/api/projects/1")` or `ls.api.get(task["data"]["image"])` (media). Statuses are
    not checked here; the LabelStudio methods check them.
    """

    def __init__(self, base_url: str, access_token):
        super().__init__()
        self.base_url = base_url
        self.access_token = access_token  # callable returning a valid access JWT

    def request(self, method, url, *args, headers=None, **kwargs):
        if url.startswith("/"):
            url = self.base_url + url
        headers = {"Authorization": f"Bearer {self.access_token()}", **(headers or {})}
        kwargs.setdefault("timeout", 120)
        return super().request(method, url, *args, headers=headers, **kwargs)


def check(response: requests.Response, *expected: int) -> requests.Response:
    """Raises with LS's answer in the message unless the status is one of `expected`."""
    if response.status_code not in expected:
        raise RuntimeError(
            f"Label Studio: {response.request.method} {response.url} answered {response.status_code}, "
            f"expected {expected}: {response.text[:500]}"
        )
    return response


class LabelStudio:
    """One Label Studio process with its own temporary data directory, plus a thin REST client."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, env: dict | None = None,
                 start_timeout: float = 180.0):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="alps-ls-"))
        self.log_path = log_path or self.data_dir / "label-studio.log"
        self.extra_env = env or {}
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.pat: str | None = None
        self._access: str | None = None
        self._access_exp = 0.0
        self.api = ApiSession(self.url, self.access_token)

    # --- process -------------------------------------------------------------------------

    def start(self) -> float:
        """Starts LS, waits for GET /health == 200, logs in and creates a PAT. Returns the seconds until healthy."""
        executable = LS_VENV / "bin" / "label-studio"
        if not executable.exists():
            raise RuntimeError(f"{executable} not found; run scripts/bootstrap-label-studio.sh first")
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": USERNAME,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_HOST": self.url,
            "ML_BLOCK_LOCAL_IP": "false",  # else POST /api/ml with a 127.0.0.1 URL is refused (403)
            "SSRF_PROTECTION_ENABLED": "false",  # else the auto-created webhook to 127.0.0.1 is refused
            "LATEST_VERSION_CHECK": "false",  # no release check against the package registry
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",  # no error reports to Sentry (and no sentry-trace headers on ML-backend calls)
            "FRONTEND_SENTRY_DSN": "",
            **self.extra_env,
        }
        with socket.socket() as s:  # else /health might be answered by whatever holds the port
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is already in use")
        if TEMPLATE_DB.exists():
            shutil.copyfile(TEMPLATE_DB, self.data_dir / "label_studio.sqlite3")
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.data_dir,
            )
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode} while starting; log: {self.log_path}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() - started > self.start_timeout:
                raise RuntimeError(f"Label Studio not healthy after {self.start_timeout:.0f} s; log: {self.log_path}")
            time.sleep(0.5)
        healthy_after = time.monotonic() - started
        self.pat = self.create_pat()
        return healthy_after

    def stop(self, timeout: float = 15.0) -> None:
        """Stops LS by its PID (SIGTERM, then SIGKILL after `timeout`)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        self.remove_data()

    # --- authentication (§8.2, §4.2) ------------------------------------------------------

    def create_pat(self) -> str:
        """Form login as the admin, then POST /api/token/ → a new personal access token."""
        browser = requests.Session()
        login = self.url + "/user/login/"
        check(browser.get(login, timeout=30), 200)
        check(browser.post(
            login,
            data={"email": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            headers={"X-CSRFToken": browser.cookies["csrftoken"], "Referer": login},
            allow_redirects=False, timeout=30,
        ), 302)
        response = check(browser.post(
            self.url + "/api/token/", json={},
            headers={"X-CSRFToken": browser.cookies["csrftoken"], "Referer": login}, timeout=30,
        ), 201)
        return response.json()["token"]

    def refresh(self) -> str:
        """POST /api/token/refresh/ {"refresh": PAT} → a new access JWT (valid about 300 s)."""
        response = check(requests.post(self.url + "/api/token/refresh/", json={"refresh": self.pat}, timeout=30), 200)
        self._access = response.json()["access"]
        self._access_exp = jwt_payload(self._access)["exp"]
        return self._access

    def access_token(self) -> str:
        """A Bearer access token with at least 60 s left, refreshed when needed."""
        if self._access is None or self._access_exp - time.time() < 60:
            self.refresh()
        return self._access

    # --- REST calls (§8.3) ----------------------------------------------------------------

    def create_project(self, title: str, label_config: str) -> dict:
        return check(self.api.post("/api/projects", json={"title": title, "label_config": label_config}), 201).json()

    def project(self, pid: int) -> dict:
        return check(self.api.get(f"/api/projects/{pid}"), 200).json()

    def patch_project(self, pid: int, **fields) -> dict:
        return check(self.api.patch(f"/api/projects/{pid}", json=fields), 200).json()

    def import_images(self, pid: int, paths: list[Path]) -> list[int]:
        """Uploads image files (multipart, one part per file); returns the new tasks' ids in the order of `paths`.

        Each part needs its own field name (LS keeps only the last file of a repeated one), and
        one request takes at most 100 files. LS stores each file as /data/upload/<pid>/<8 hex>-<name>,
        so tasks are matched to files by that name (names must be unique within the project).
        """
        for start in range(0, len(paths), 100):  # Django's DATA_UPLOAD_MAX_NUMBER_FILES: 100 per request
            chunk = paths[start:start + 100]
            files = [(f"file{i}", (Path(p).name, open(p, "rb"), "application/octet-stream")) for i, p in enumerate(chunk)]
            try:
                result = check(self.api.post(f"/api/projects/{pid}/import", files=files), 201).json()
            finally:
                for _, (_, handle, _) in files:
                    handle.close()
            if result["task_count"] != len(chunk):
                raise RuntimeError(f"Label Studio: import of {len(chunk)} files made {result['task_count']} tasks")
        by_name = {t["data"]["image"].rsplit("/", 1)[1].split("-", 1)[1]: t["id"] for t in self.tasks(pid)}
        return [by_name[Path(p).name] for p in paths]

    def tasks(self, pid: int, ordering: str | None = None, fields: str = "all", page_size: int = 100) -> list[dict]:
        """GET /api/tasks, every page. `ordering` e.g. "tasks:predictions_score" or "-tasks:predictions_score"."""
        query = {"ordering": [ordering]} if ordering else {}
        tasks, page = [], 1
        while True:
            response = self.api.get("/api/tasks", params={
                "project": pid, "fields": fields, "page": page, "page_size": page_size, "query": json.dumps(query)})
            if response.status_code == 404:  # a page past the end
                break
            body = check(response, 200).json()
            tasks += body["tasks"]
            if not body["tasks"] or len(tasks) >= body["total"]:
                break
            page += 1
        return tasks

    def connect_ml_backend(self, pid: int, url: str, title: str = "alps", extra_params: dict | None = None,
                           basic_auth: tuple[str, str] | None = None) -> dict:
        """POST /api/ml: LS calls the backend's /health and /setup and creates its <url>/webhook."""
        body = {"url": url, "project": pid, "title": title, "is_interactive": False, "extra_params": extra_params}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        return check(self.api.post("/api/ml", json=body), 201).json()

    def patch_ml_backend(self, ml_id: int, **fields) -> dict:
        """PATCH /api/ml/{id}: LS 1.23 re-validates the connection, so pass `url` and `project` with the change
        (e.g. extra_params), as its settings form does; it then calls /setup and stores the model_version."""
        return check(self.api.patch(f"/api/ml/{ml_id}", json=fields), 200).json()

    def ml_backends(self, pid: int) -> list[dict]:
        """GET /api/ml?project= (makes LS call every backend's /health and /setup)."""
        return check(self.api.get("/api/ml", params={"project": pid}), 200).json()

    def retrieve_predictions(self, pid: int, task_ids: list[int] | None = None, timeout: float = 120) -> dict:
        """The Data Manager action "Retrieve predictions": one /predict with the tasks lacking the backend's version.

        Always answers 200, whatever the backend did: assert on predictions() instead. LS answers only
        after storing every prediction, one at a time (about 10 per second on 2 busy cores): raise
        `timeout` (seconds) for large selections.
        """
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": task_ids}
        return check(self.api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                                   json={"selectedItems": selected}, timeout=timeout), 200).json()

    def views(self, pid: int) -> list[dict]:
        """The project's Data Manager tabs."""
        return check(self.api.get("/api/dm/views/", params={"project": pid}), 200).json()

    def view_tasks(self, view_id: int) -> list[dict]:
        """The tasks a Data Manager tab lists, in its order, with the columns it shows (as the grid reads them)."""
        return check(self.api.get("/api/tasks", params={"view": view_id, "page_size": 10000}), 200).json()["tasks"]

    def view_task_ids(self, view_id: int) -> list[int]:
        """Ids of the tasks a Data Manager tab lists, in its order."""
        return [task["id"] for task in self.view_tasks(view_id)]

    def predictions(self, pid: int) -> list[dict]:
        return check(self.api.get("/api/predictions", params={"project": pid}), 200).json()

    def annotate(self, task_id: int, from_name: str, to_name: str, label: str) -> int:
        """POST /api/tasks/{id}/annotations with one Choices result; returns the annotation id."""
        body = {"result": [choice(from_name, to_name, label)], "lead_time": 1.0, "was_cancelled": False, "ground_truth": False}
        return check(self.api.post(f"/api/tasks/{task_id}/annotations", json=body), 201).json()["id"]

    def update_annotation(self, annotation_id: int, from_name: str, to_name: str, label: str) -> dict:
        body = {"result": [choice(from_name, to_name, label)]}
        return check(self.api.patch(f"/api/annotations/{annotation_id}", json=body), 200).json()

    def delete_annotation(self, annotation_id: int) -> None:
        check(self.api.delete(f"/api/annotations/{annotation_id}"), 204)

    def start_training(self, ml_id: int) -> None:
        """POST /api/ml/{id}/train: LS posts START_TRAINING to the backend's /webhook; answers 200, empty body."""
        check(self.api.post(f"/api/ml/{ml_id}/train", json={}), 200)

    def webhooks(self, pid: int) -> list[dict]:
        return check(self.api.get("/api/webhooks", params={"project": pid}), 200).json()


def choice(from_name: str, to_name: str, label: str) -> dict:
    """One Choices result item, as LS stores it in annotations and predictions."""
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}
