"""Loading and writing models: files, external data, the protobuf wire format, onnxruntime sessions,
threads."""
