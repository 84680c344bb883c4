"""A client of Chamberlain that shares no code with it: Python grpcio with grpcio-reflection as
shipped, talking to Envoy, knowing no .proto file. Every message type comes from the server's
reflection. Run by tests/tests/e2e/clients.rs:

    python grpcio_client.py HOST:PORT TOKEN

Prints one line per step ("ok <step> ...") and exits non-zero on the first failure.
"""

import datetime
import sys
import threading
import time

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call, reflection included."""

    def __init__(self, token):
        self.token = token

    def _details(self, details):
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else \
            _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d, metadata):
        self.method, self.timeout, self.credentials = d.method, d.timeout, d.credentials
        self.wait_for_ready, self.compression = d.wait_for_ready, d.compression
        self.metadata = metadata


def ok(step, detail=""):
    print(f"ok {step} {detail}".rstrip(), flush=True)


def main():
    address, token = sys.argv[1], sys.argv[2]
    plain = grpc.insecure_channel(address)
    channel = grpc.intercept_channel(plain, Bearer(token))

    # Reflection (v1alpha, what grpcio-reflection speaks), through Envoy.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    assert "chamberlain.v1.ChamberService" in services, services
    assert "grpc.health.v1.Health" in services, services
    ok("reflection", ",".join(sorted(services)))
    pool = descriptor_pool.DescriptorPool(db)

    def method(channel, service, name):
        m = pool.FindServiceByName(service).FindMethodByName(name)
        request = message_factory.GetMessageClass(m.input_type)
        reply = message_factory.GetMessageClass(m.output_type)
        path = f"/{service}/{name}"
        if m.server_streaming:
            call = channel.unary_stream(path, request.SerializeToString, reply.FromString)
        else:
            call = channel.unary_unary(path, request.SerializeToString, reply.FromString)
        return request, call

    # Health, as a load balancer asks: no token.
    request, check = method(plain, "grpc.health.v1.Health", "Check")
    status = check(request(service=""), timeout=10).status
    assert status == 1, f"health status {status}"  # SERVING
    ok("health", "SERVING without a token")

    request, create_section = method(channel, "chamberlain.v1.SectionService", "CreateSection")
    section = create_section(request(name="python lab"), timeout=10)
    ok("section", section.id)

    # Bytes that are not a valid CreateSectionRequest (field 1, `name`, holding invalid UTF-8),
    # sent as they are: the caller's mistake, INVALID_ARGUMENT, not INTERNAL.
    raw = channel.unary_unary("/chamberlain.v1.SectionService/CreateSection")
    try:
        raw(b"\x0a\x03a\xff\xfe", timeout=10)
        raise AssertionError("invalid UTF-8 was accepted")
    except grpc.RpcError as refused:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, (refused.code(), refused.details())
        ok("invalid utf-8", refused.code().name)

    # A chamber without `format`: proto3 leaves it empty, and it means JSON.
    request, create_chamber = method(channel, "chamberlain.v1.ChamberService", "CreateChamber")
    new_detector = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("chamberlain.v1.NewDetector"))
    chamber = create_chamber(request(
        section_id=section.id, name="py-1", url="http://127.0.0.2:9/state",
        interval=datetime.timedelta(seconds=5),
        detectors=[new_detector(name="t", unit="C", key="/t"),
                   new_detector(name="h", unit="%", key="/h")]), timeout=10)
    assert chamber.format == "json", chamber.format
    ok("chamber", f"{chamber.id} format={chamber.format}")

    request, set_interval = method(channel, "chamberlain.v1.ChamberService", "SetChamberInterval")
    changed = set_interval(request(id=chamber.id, interval=datetime.timedelta(seconds=10)),
                           timeout=10)
    assert changed.interval.seconds == 10, changed.interval
    ok("interval", "10s")

    request, get_chamber = method(channel, "chamberlain.v1.ChamberService", "GetChamber")
    got = get_chamber(request(id=chamber.id), timeout=10)
    assert got.interval.seconds == 10 and len(got.detectors) == 2, got
    ok("get", f"{len(got.detectors)} detectors")

    request, list_chambers = method(channel, "chamberlain.v1.ChamberService", "ListChambers")
    listed = list_chambers(request(), timeout=10)
    mine = [c for c in listed.chambers if c.id == chamber.id]
    assert len(mine) == 1 and len(mine[0].detectors) == 2, listed
    ok("list", f"{len(mine[0].detectors)} detectors")

    # A live stream for a few seconds: it carries the batch started meanwhile.
    request, watch = method(channel, "chamberlain.v1.EventService", "WatchEvents")
    stream = watch(request(section_id=section.id), timeout=8)
    events = []

    def read():
        try:
            for event in stream:
                events.append(event)
                if event.WhichOneof("kind") == "batch_started":
                    stream.cancel()
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise

    reader = threading.Thread(target=read)
    reader.start()
    request, start_batch = method(channel, "chamberlain.v1.BatchService", "StartBatch")
    end_request, end_batch = method(channel, "chamberlain.v1.BatchService", "EndBatch")

    def seen():
        return any(e.WhichOneof("kind") == "batch_started" for e in events)

    # The stream subscribes when the call reaches the gateway, which the client cannot see:
    # start a batch, and if its event does not come within a second, end it and start another.
    deadline = time.monotonic() + 6
    attempt = 0
    while time.monotonic() < deadline and not seen():
        attempt += 1
        batch = start_batch(request(section_id=section.id, name=f"run {attempt}"), timeout=10)
        until = time.monotonic() + 1
        while time.monotonic() < until and not seen():
            time.sleep(0.05)
        if not seen():
            end_batch(end_request(id=batch.id), timeout=10)
    reader.join(timeout=10)
    kinds = [e.WhichOneof("kind") for e in events]
    assert "batch_started" in kinds, kinds
    ok("stream", ",".join(kinds))


if __name__ == "__main__":
    main()
