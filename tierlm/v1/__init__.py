"""Generated gRPC stubs for the tierlm.v1 contract (see protos/tierlm/v1); regenerate with `make protos`.

The contract's request metadata keys are named here, beside the stubs every side imports.
"""

#: Request metadata that picks one of a server's models (a cloud app serving several);
#: without it the server's first model answers.
MODEL_METADATA_KEY = "tierlm-model"
