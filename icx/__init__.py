"""Generated protobuf and gRPC code for the icx.v1 protocol (see proto/); regenerate with `make proto`."""
