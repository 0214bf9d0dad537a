"""A TensorFlow-Serving-compatible server for infbench's models: REST and gRPC in one process,
both also speaking the Open Inference Protocol ("V2": KServe, Triton, MLServer).

Why: "REST vs gRPC" is only a fair question when both transports serve the same model, with the
same preprocessing, in the same process, on the same machine. The real tensorflow_model_server
cannot be installed here, so this server speaks its two APIs (the parts a client of a one-input
image model uses) with infbench's model code behind both, and times each request's phases.

    python -m servers.tfserving --rest-port 8501 --grpc-port 8500 [--model-name default]
        [--model-version 1] [--host 127.0.0.1]

Port 0 picks a free port; the first line on stderr names both ports:
    servers.tfserving: REST on http://127.0.0.1:8501 gRPC on 127.0.0.1:8500 pid=1234
gRPC serves (health NOT_SERVING) while the model loads; REST listens once it is loaded and warm.

REST (Starlette on Uvicorn, on the event loop; the work runs in anyio's worker threads):
    GET  /health                                  200 {"status": "ok", "pid", ...} once loaded
    GET  /v1/models/<name>[/versions/<v>]         200 {"model_version_status": [...]}
    POST /v1/models/<name>[/versions/<v>]:predict
         {"instances": [...]}  row format      -> 200 {"predictions": [[p0, p1, ...], ...]}
         {"inputs": [...]}     columnar format -> 200 {"outputs": [[p0, p1, ...], ...]}
      An instance (row) or the input (columnar, batch first) is a float tensor as nested number
      lists, (size, size, channels) per instance, fed to the model as it is; or {"b64": "..."},
      a JPEG/PNG that servers.shared.model decodes, resizes and scales. {"<input name>": value} is
      accepted too; optional "signature_name" must be "serving_default".
      Errors {"error": "<one line>"}: 400 malformed JSON, wrong shape or dtype, bad image or
      base64, both or neither of instances/inputs, unknown signature; 404 unknown model,
      version or path; 413 body over INFBENCH_MAX_BODY_BYTES or more than INFBENCH_MAX_IMAGES
      instances. The body limit is servers.shared.bodylimit's, as on every infbench server: a body
      still coming is drained before any answer.
V2 REST (the same app, thread pool and model lock):
    GET  /v2                                      {"name", "version", "extensions":
                                                   ["binary_tensor_data"]}
    GET  /v2/health/live, /v2/health/ready        200 {} (ready: REST listens once loaded)
    GET  /v2/models/<name>[/versions/<v>]         {"name", "versions": ["1"], "platform",
         "inputs": [{"name", "datatype": "FP32", "shape": [-1, size, size, channels]}],
         "outputs": [{"name": "output_0", "datatype": "FP32", "shape": [-1, classes]}]}
    GET  /v2/models/<name>[/versions/<v>]/ready   200 {}
    POST /v2/models/<name>[/versions/<v>]/infer
         {"inputs": [{"name", "shape": [N, size, size, channels], "datatype": "FP32",
                      "data": [row-major values, flat or nested]}],
          "outputs": [{"name": "output_0", "parameters": {"binary_data": bool}}]?, "id"?}
         or the binary tensor data extension: Inference-Header-Content-Length: <n>, the first
         n bytes that JSON (the input with "parameters": {"binary_data_size": <bytes>} and no
         "data"), then the raw little-endian FP32 bytes.
      -> 200 {"model_name", "model_version", "id"?, "outputs": [{"name": "output_0",
             "datatype": "FP32", "shape": [N, classes], "data": [...]}]}; with
             "binary_data_output": true (request parameters) or an output's "binary_data": true
             the output's "parameters": {"binary_data_size"} instead of "data", its bytes after
             the JSON, the JSON's length in Inference-Header-Content-Length.
      The model takes one FP32 input (the image after preprocessing) under any name. Errors
      {"error": "<one line>"}: 400 malformed JSON, wrong datatype, shape or value count, a
      binary size that does not match, unknown outputs; 404 unknown model, version or path;
      413 as for TF-Serving's API.
gRPC (grpcio's thread pool, same model behind a lock):
    tensorflow.serving.PredictionService/Predict: one input, DT_FLOAT (tensor_content or
      float_val, shape [N, size, size, channels]) or DT_STRING (string_val, shape [N], encoded
      images); one output "output_0", DT_FLOAT [N, classes] in tensor_content.
    tensorflow.serving.ModelService/GetModelStatus
    inference.GRPCInferenceService (the V2 protocol, tritonclient's generated stubs):
      ModelInfer (one FP32 input in raw_input_contents or contents.fp32_contents; the output
      "output_0" in raw_output_contents), ServerLive, ServerReady, ModelReady, ServerMetadata,
      ModelMetadata; the same checks as V2 REST, as INVALID_ARGUMENT / NOT_FOUND.
    grpc.health.v1.Health: NOT_SERVING while loading, SERVING once the model is warm.
    Errors: INVALID_ARGUMENT (bad input), NOT_FOUND (model, version), RESOURCE_EXHAUSTED
      (message over INFBENCH_MAX_BODY_BYTES, set as grpc.max_receive_message_length, or more
      than INFBENCH_MAX_IMAGES), UNAVAILABLE (loading), INTERNAL (a real fault).

Environment: INFBENCH_MODEL_PATH (required), INFBENCH_CALL (default predict_on_batch here),
INFBENCH_MAX_BODY_BYTES, INFBENCH_MAX_IMAGES, INFBENCH_INPUT_SIZE, INFBENCH_PAD_BATCH,
INFBENCH_THREAD_LIMIT (REST worker threads) as in servers.shared.settings; INFBENCH_GRPC_THREADS
(gRPC worker threads, default 8); INFBENCH_TIMING_DIR (the per-request time split, below);
INFBENCH_PROBE_DIR (servers.shared.probes).

The time split (always measured, written only when INFBENCH_TIMING_DIR is set): one JSON line
per predict (or V2 infer) request, any status, appended to <dir>/timings-<pid>.jsonl by
servers.shared.timings (buffered, flushed about once a second and at shutdown; the folder and
the file are made at start-up, and a server that cannot make them does not start):
    {"t": unix time the request reached the handler, "protocol": "rest" | "grpc",
     "format": "row" | "row-b64" | "columnar" | "columnar-b64" | "v2-json" | "v2-binary" (REST),
               "tensor_content" | "float_val" | "string_val" | "v2-raw" | "v2-contents" (gRPC),
               null if never parsed,
     "batch": instances (0 if never parsed), "status": HTTP status (REST) or gRPC code name,
     "ok": status is 200 / "OK",
     "receive_ms": REST: reading the body; gRPC: from the call's arrival to the start of
                   deserialising (waiting for a free server thread, then the message),
     "parse_ms":   receive_ms + JSON parse / protobuf deserialise,
     "decode_ms":  base64 + image decode/resize, or number lists / tensor bytes to an array,
     "queue_ms":   waiting for a worker thread (REST) and for the model lock (both),
     "model_ms":   the one model call, "serialize_ms": output to JSON / to a TensorProto and
                   the response message to bytes,
     "total_ms":   the handler's whole time, from arrival to the response bytes,
     "decode_cpu_ms", "model_cpu_ms": the CPU time (time.thread_time) of the thread that ran
                   decode and the model call, during each: both run on one thread without
                   yielding, so wall - CPU is time that thread was off a core (waiting for one,
                   for memory, or for TensorFlow's own op threads, whose CPU is not in it);
                   null when the phase did not run}
Only predict and infer requests are recorded. Not recorded: REST answers given before the
predict handler (unknown path, wrong method, a Content-Length over INFBENCH_MAX_BODY_BYTES)
and gRPC messages that do not deserialise (grpcio answers those INTERNAL itself).

The modules: servable (the refusal type, the options, the model behind both protocols), timing
(the time split's record and lines), core (what the process holds), rest, grpc_api, v2 (the V2
checks and its REST routes), v2_grpc (GRPCInferenceService), and main
(the command line, the listeners, the load; run by __main__).
"""
