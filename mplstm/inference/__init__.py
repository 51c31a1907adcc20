"""Where a model package meets a runtime, torch-free (DESIGN.md §1).

One home for inference, used alike by the service, the batch scorer and live sessions:
- `backend`: the narrow interface every backend offers (`infer`, `close`);
- `onnxruntime`, `tensorrt`: the two backends (TensorRT engines: naming, the host's
  GPU, engine selection and the one runner);
- `options`: what picks a backend (`BackendOptions`) and where inference runs
  (`Placement`); `settings`: the `MPLSTM_*` variables every user of inference reads;
- `select`: `open_backend`, the one place a backend is chosen;
- `sessions`: each worker process's own CPU sessions; `tasks`: what a worker runs
  (decode, decode-and-infer);
- `parity`: the one comparison of two runtimes' outputs and its tolerance table.
"""
