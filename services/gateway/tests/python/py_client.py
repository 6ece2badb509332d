"""The official Python SDK as a client: starts `process_request` (run by our Rust worker), waits
for it, and prints one JSON line with the instance id, status and output.

Usage: py_client.py <endpoint> <name> <delay_seconds>
"""
import json
import sys

from durabletask import client as dt_client
from durabletask.azuremanaged.client import DurableTaskSchedulerClient


def main() -> None:
    endpoint, name, delay = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = DurableTaskSchedulerClient(
        host_address=endpoint, taskhub="default", token_credential=None, secure_channel=False
    )
    instance_id = c.schedule_new_orchestration(
        "process_request", input={"name": name, "delay_seconds": delay}
    )
    state = c.wait_for_orchestration_completion(instance_id, timeout=60)
    status = state.runtime_status if state else None
    print(
        json.dumps(
            {
                "id": instance_id,
                "status": status.name if status is not None else None,
                "output": json.loads(state.serialized_output) if state and state.serialized_output else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
