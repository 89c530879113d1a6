"""Generated gRPC stubs for the tierlm.v1 contract (see protos/tierlm/v1); regenerate with `make protos`."""
