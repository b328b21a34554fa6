"""One ``APIRouter`` per surface, each route parsing, calling the service and shaping its answer.

:mod:`.v1` (audio and features → frames), :mod:`.v2` (Open Inference Protocol), :mod:`.ops` (health
probes and metrics).
"""
