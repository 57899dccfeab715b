"""Generated tandem.v1 modules (``scripts/gen_proto.sh``; do not edit ``*_pb2*.py`` by hand)."""
