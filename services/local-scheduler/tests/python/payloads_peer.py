"""Large payloads through the official Python SDK's blob claim check, against Rust peers.

Usage: payloads_peer.py HOST:PORT CONNECTION_STRING CONTAINER MODE [ARGS]

  worker            runs a worker with `py_large` (its input through the activity `py_shout`:
                    upper-cased, with "!" appended) until stdin closes
  client NAME SIZE  starts orchestration NAME with a SIZE-byte input, waits for it, and checks
                    its output is the input upper-cased with "!" appended; prints "ok <id>"
"""

import json
import sys

from durabletask import client as dt_client
from durabletask import task
from durabletask.azuremanaged.client import DurableTaskSchedulerClient
from durabletask.azuremanaged.worker import DurableTaskSchedulerWorker
from durabletask.extensions.azure_blob_payloads import BlobPayloadStore, BlobPayloadStoreOptions

ADDRESS, CONNECTION_STRING, CONTAINER, MODE = sys.argv[1:5]
TASKHUB = "default"


def store():
    return BlobPayloadStore(BlobPayloadStoreOptions(
        connection_string=CONNECTION_STRING, container_name=CONTAINER))


def py_shout(ctx: task.ActivityContext, text: str) -> str:
    return text.upper() + "!"


def py_large(ctx: task.OrchestrationContext, text: str):
    shouted = yield ctx.call_activity(py_shout, input=text)
    return shouted


def payload(size: int) -> str:
    # Not one repeated byte: compression must not hide a wrong order.
    unit = "abcdefghijklmnopqrstuvwxyz0123456789"
    return (unit * (size // len(unit) + 1))[:size]


def main() -> int:
    if MODE == "worker":
        w = DurableTaskSchedulerWorker(host_address=ADDRESS, taskhub=TASKHUB, token_credential=None,
                                       secure_channel=False, payload_store=store())
        w.add_orchestrator(py_large)
        w.add_activity(py_shout)
        w.start()
        print("worker started", flush=True)
        try:
            sys.stdin.read()
        finally:
            w.stop()
        return 0
    if MODE == "client":
        name, size = sys.argv[5], int(sys.argv[6])
        c = DurableTaskSchedulerClient(host_address=ADDRESS, taskhub=TASKHUB, token_credential=None,
                                       secure_channel=False, payload_store=store())
        text = payload(size)
        iid = c.schedule_new_orchestration(name, input=text)
        state = c.wait_for_orchestration_completion(iid, timeout=120)
        assert state is not None, "no state"
        assert state.runtime_status == dt_client.OrchestrationStatus.COMPLETED, \
            f"{state.runtime_status}: {state.failure_details}"
        out = json.loads(state.serialized_output)
        assert out == text.upper() + "!", f"wrong output of {len(out)} characters"
        print(f"ok {iid}", flush=True)
        return 0
    raise SystemExit(f"unknown mode {MODE}")


if __name__ == "__main__":
    sys.exit(main())
