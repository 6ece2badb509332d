"""Runs the official Python SDK's in-memory DTS server (durabletask.testing) on a given port.

Used by the Rust interop tests as an independent implementation of the protocol.
Prints READY once listening and runs until stdin closes or it is terminated.
"""
import sys

from durabletask.testing import create_test_backend


def main() -> None:
    port = int(sys.argv[1])
    backend = create_test_backend(port=port)
    print("READY", flush=True)
    try:
        sys.stdin.read()  # returns when the parent closes our stdin (or dies)
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
