"""The inference service: HTTP only (DESIGN.md §7); inference itself is `mplstm.inference`.

`app` builds the FastAPI app and its lifespan; `routes` are thin handlers over
`pipeline` (decode, batch, infer, time); `repository` loads, warms up and reloads
packages; `batcher` is the dynamic batcher; `video_workers` the video route in the
worker processes; `oip` the Open Inference Protocol's tensors; `settings`, `auth`,
`limits`, `logs`, `metrics`, `errors`, `schemas`, `uploads` the rest of the HTTP side.
"""
