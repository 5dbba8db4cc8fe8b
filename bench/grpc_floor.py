"""The transport floor: a grpc.aio server that answers every `Embed` with one canned response of
the real size (one d-dim float32 vector, a fingerprint, timings) and does nothing else.

`python -m bench.serve` saturates it with the same load generator it points at Tessera, so the
table can say how many single-item requests per second Python gRPC itself carries on this machine,
and what CPU each costs in the server and in the client: the ceiling no Python server can pass.

    python -m bench.grpc_floor --dim 256   # prints "listening on 127.0.0.1:PORT", serves until killed
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np

from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc


class CannedServicer(pb_grpc.TesseraServicer):
    def __init__(self, dim: int) -> None:
        self.vector = np.zeros(dim, dtype="<f4").tobytes()  # (d,) float32 as the wire carries it
        self.dim = dim

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        response = pb.EmbedResponse(
            fingerprint="0" * 64, embed_dim=self.dim, request_id=request.request_id,
            timings=pb.Timings(queue_ms=0.0, preprocess_ms=0.0, inference_ms=0.0),
        )  # fmt: skip
        response.embeddings.add(vector=self.vector)
        return response


async def serve(dim: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_TesseraServicer_to_server(CannedServicer(dim), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension of the canned vector")
    asyncio.run(serve(parser.parse_args(argv).dim))


if __name__ == "__main__":
    main()
