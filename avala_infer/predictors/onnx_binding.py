"""Running an onnxruntime session with IO binding: the batch goes in where it already is and the outputs come out
as torch tensors on the model's device, with no host round trip between the model and the postprocess (NMS).

``session.run`` takes numpy and returns numpy: on CUDA the collated batch would come back to the host to go in,
and the outputs would go to the host and back to the device for NMS. Here, on CUDA, the input is bound by its
device pointer and the outputs to device memory that torch allocated (so they are ordinary torch tensors); on a
CPU the input is bound as the numpy array it is and the outputs to numpy arrays we allocate, which torch wraps
without a copy (or which come back as they are, ``numpy_outputs``: for a postprocess in numpy, with no torch).

Output buffers need their shapes before the run, and a dynamic model's depend on its input's: the first run of
each input shape lets onnxruntime allocate the outputs (on the host: one round trip for that batch) and records
their shapes; every later run of that shape writes into fresh buffers of its own. Fresh, not reused: the engine
may still be reading one batch's outputs while the next runs. The outputs are the values ``session.run`` gives,
bit for bit (the same kernels write them; ``tests/test_onnx_binding.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from avala_infer.errors import ModelLoadError

log = logging.getLogger(__name__)

# onnxruntime's tensor type names -> numpy dtypes (what YOLO exports use; others go through session.run)
NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class BoundSession:
    """One session's runs through IO binding, on the device the session runs on (``cpu`` or ``cuda:N``).

    Thread-safe: each run makes its own binding (the engine runs CPU batches side by side), and the shape table
    only ever gains entries (equal ones when two threads learn the same shape).
    """

    def __init__(self, session: Any, device: str, *, numpy_outputs: bool = False) -> None:
        self.session = session
        self.device = device
        self.on_cuda = device.startswith("cuda")
        # on a CPU: the outputs as the numpy arrays they are written to, not wrapped as torch tensors (a caller
        # whose postprocess is numpy's then never imports torch)
        self.numpy_outputs = numpy_outputs and not self.on_cuda
        self.device_id = int(device.split(":")[1]) if self.on_cuda else 0
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_dtype = NUMPY_TYPES.get(model_input.type, np.float32)
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        unknown = [o.type for o in outputs if o.type not in NUMPY_TYPES]
        if unknown:
            raise ModelLoadError(f"this model's outputs of types {unknown} cannot be bound to buffers")
        self.output_dtypes = [NUMPY_TYPES[o.type] for o in outputs]
        # input shape -> the output shapes it gives (a fixed-shape model's are known at once, under any key)
        self._fixed = [tuple(o.shape) for o in outputs] if all(_static(o.shape) for o in outputs) else None
        self._shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]] | None:
        """The outputs' shapes for an input of ``input_shape``, when known (fixed, or seen before)."""
        return self._fixed if self._fixed is not None else self._shapes.get(input_shape)

    def run(self, batch: Any) -> list:
        """The model's outputs for ``batch`` (a numpy array, or a torch tensor on the CPU or the session's CUDA
        device) as torch tensors on ``self.device`` (numpy arrays with ``numpy_outputs`` on a CPU), in the
        session's output order."""
        binding = self.session.io_binding()
        batch = self._bind_input(binding, batch)
        shapes = self.output_shapes(tuple(batch.shape))
        if shapes is None:  # first run of this input shape: onnxruntime allocates, we learn the shapes
            for name in self.output_names:
                binding.bind_output(name, "cuda" if self.on_cuda else "cpu", self.device_id)
            self.session.run_with_iobinding(binding)
            values = binding.get_outputs()
            self._shapes[tuple(batch.shape)] = [tuple(value.shape()) for value in values]
            host = binding.copy_outputs_to_cpu()
            if self.numpy_outputs:
                return host
            import torch

            return [torch.from_numpy(array).to(self.device) for array in host]
        outputs = [self._new_output(shape, dtype) for shape, dtype in zip(shapes, self.output_dtypes)]
        for name, out, dtype in zip(self.output_names, outputs, self.output_dtypes):
            pointer = out.ctypes.data if isinstance(out, np.ndarray) else out.data_ptr()
            binding.bind_output(
                name, "cuda" if self.on_cuda else "cpu", self.device_id, dtype, tuple(out.shape), pointer
            )
        self.session.run_with_iobinding(binding)  # returns once the outputs are written (onnxruntime syncs)
        return outputs

    def _bind_input(self, binding: Any, batch: Any) -> Any:
        """Bind ``batch`` as the model's input where it lies; returns what was bound (kept alive by the caller
        until the run ends: onnxruntime reads it by pointer)."""
        if not isinstance(batch, np.ndarray):
            return self._bind_tensor(binding, batch)
        array = np.ascontiguousarray(batch, dtype=self.input_dtype)
        binding.bind_cpu_input(self.input_name, array)  # on CUDA onnxruntime copies it to the device itself
        return array

    def _bind_tensor(self, binding: Any, batch: Any) -> Any:
        """:meth:`_bind_input` of a torch tensor."""
        import torch

        if batch.is_cuda:
            if not self.on_cuda:
                raise ValueError(f"a CUDA batch for a session on {self.device}")
            batch = batch.to(torch_dtype(self.input_dtype)).contiguous()  # NCHW, as the graph reads it
            # onnxruntime runs on a stream of its own: the kernels that made the batch must be done first
            torch.cuda.current_stream(batch.device).synchronize()
            binding.bind_input(
                self.input_name, "cuda", batch.device.index or 0, self.input_dtype, tuple(batch.shape),
                batch.data_ptr(),
            )  # fmt: skip
            return batch
        array = np.ascontiguousarray(batch.numpy(), dtype=self.input_dtype)
        binding.bind_cpu_input(self.input_name, array)  # on CUDA onnxruntime copies it to the device itself
        return array

    def _new_output(self, shape: tuple[int, ...], dtype: Any) -> Any:
        if self.numpy_outputs:
            return np.empty(shape, dtype=dtype)
        import torch

        if self.on_cuda:
            return torch.empty(shape, dtype=torch_dtype(dtype), device=self.device)
        return torch.from_numpy(np.empty(shape, dtype=dtype))


def torch_dtype(dtype: Any) -> Any:
    """The torch dtype of a numpy one (torch's own table, through an empty array)."""
    import torch

    return torch.from_numpy(np.empty(0, dtype)).dtype


def _static(shape: Any) -> bool:
    return all(isinstance(dim, int) for dim in shape)
