"""Python client for ALPS, the active-learning prediction server (gRPC API ``alps.v1``).

``Client`` wraps the common workflows (create a project, add a folder of labelled images,
train with a progress bar, rank a folder of unlabelled images, predict); its ``projects``,
``examples``, ``training``, ``versions``, ``inference`` and ``heuristics`` attributes are the
raw gRPC stubs for everything else, with the messages in ``pb`` (``pb.projects_pb2`` ...).
Calls raise ``grpc.RpcError`` with the server's status code and message.
"""

from alps_client.client import Client, TrainingFailed, pb

__all__ = ["Client", "TrainingFailed", "pb"]
