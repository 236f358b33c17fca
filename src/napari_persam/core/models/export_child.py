"""Exporting an image encoder to ONNX in a short-lived child process, else here.

Why a child process: ``torch.onnx.export`` imports onnx, onnxscript and onnx_ir,
and ``import onnx`` loads ``ml_dtypes._ml_dtypes_ext``, whose module
initialisation holds Python's GIL for about 1.3 s (measured). The widget exports
in a worker thread of napari's own process, so napari's window froze that long.
What the exporter allocates (its graphs, the ONNX model in memory) also stayed
in napari's process. A child takes both and ends.

The parent writes the encoder's ``state_dict()`` (``torch.save``, CPU tensors) and
a description of its modules (:func:`describe_modules`: classes and plain settings
such as head counts and window sizes) into the export's work folder, then starts
``python -m napari_persam.core.models.export_child``. The child builds the
registry's architecture, checks that its modules are the parent's, loads the
weights strictly (``weights_only=True``: no pickled objects) and makes the same
:func:`export_onnx` call the parent would. The parent polls it and yields
progress meanwhile, so closing the generator (a cancelled Run) kills the child.

When no child can do it (a model outside the registry, modules that differ, a
child that cannot start or fails), :func:`iter_export` exports in this process,
once, as before.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_persam.core.models.llvm_clash import keep_triton_out_beside_system_llvm
from napari_persam.core.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

ONNX_OPSET = 18
CHILD_MODULE = "napari_persam.core.models.export_child"
#: Seconds between two looks at the child (and two yields: how soon a cancel is seen).
POLL_S = 0.25
#: The waiting message counts seconds in steps of this many (a new terminal bar each).
_TELL_EVERY_S = 5
#: A child still exporting after this long is stopped, and the run goes on with PyTorch.
#: ViT-B takes half a minute of CPU time here and ViT-H a few; a child that is this
#: late is stuck (a hung import, a starved machine), and waiting longer helps nobody.
EXPORT_TIMEOUT_S = 30 * 60.0
_CHILD_FOLDER = ".child"
_REASON_CHARS = 600


class ExportError(RuntimeError):
    """The encoder could not be exported (the caller falls back to PyTorch)."""


class ExportFailed(ExportError):
    """The ONNX export itself failed: no runtime can use this encoder (not one to retry
    with another runtime, nor in the next run with the same software)."""


class ExportTimedOut(ExportFailed):
    """The export ran past :data:`EXPORT_TIMEOUT_S`: no other runtime should wait for it again."""


class ChildUnusable(RuntimeError):
    """A child process cannot export this encoder; the message says why."""


def iter_export(
    encoder: torch.nn.Module, *, model_name: str, img_size: int, path: Path, message: str
) -> Generator[Progress, None, dict[str, str]]:
    """Write ``encoder``'s ONNX file to ``path`` (its weights beside it).

    In a child process when it can rebuild ``encoder``, else in this one. Yields
    ``Progress(0, 1, ...)`` (``message``, then the seconds waited) every
    :data:`POLL_S` while the child works; closing the generator kills the child.
    Returns how it was exported, for the export's record. Raises
    :class:`ExportError` when the export failed in both places, or when the child
    ran past :data:`EXPORT_TIMEOUT_S` (it is killed; exporting here instead would
    stall the same way, inside the caller's process).
    """
    try:
        yield from _iter_export_in_child(
            encoder, model_name=model_name, img_size=img_size, path=path, message=message
        )
        return {"exported_in": "child process"}
    except ChildUnusable as error:
        reason = str(error)
    try:
        export_onnx(encoder, img_size=img_size, path=path)
    except ExportError as error:
        raise ExportFailed(f"{error} (in a child process: {reason})") from error
    return {"exported_in": "calling process", "child_unused": reason}


def child_command(
    *, model_name: str, img_size: int, weights: Path, modules: Path, out: Path
) -> list[str]:
    """The command line of the child process; :class:`ChildUnusable` when there is none."""
    from napari_persam.core.models.registry import MODEL_REGISTRY

    if model_name not in MODEL_REGISTRY:
        raise ChildUnusable(f"{model_name!r} is not a registry model, which a child could build")
    if getattr(sys, "frozen", False) or not sys.executable:
        # A frozen application's executable is the application, not a Python.
        raise ChildUnusable("this application cannot start a Python child process")
    return [
        sys.executable,
        "-m",
        CHILD_MODULE,
        f"--model={model_name}",
        f"--img-size={int(img_size)}",
        f"--weights={weights}",
        f"--modules={modules}",
        f"--out={out}",
    ]


def _iter_export_in_child(
    encoder: torch.nn.Module, *, model_name: str, img_size: int, path: Path, message: str
) -> Generator[Progress, None, None]:
    inputs = path.parent / _CHILD_FOLDER  # inside the export's work folder
    out = inputs / "out" / path.name
    weights, modules, log = inputs / "weights.pt", inputs / "modules.json", inputs / "stderr.txt"
    command = child_command(
        model_name=model_name, img_size=img_size, weights=weights, modules=modules, out=out
    )
    _check_signature(encoder, model_name)  # a child would refuse it, after seconds
    try:
        try:
            out.parent.mkdir(parents=True)
            _save_weights(encoder, weights)
            modules.write_text(json.dumps(describe_modules(encoder)), encoding="utf-8")
        except OSError as error:
            raise ChildUnusable(f"its inputs could not be written: {error}") from error
        with log.open("wb") as stderr:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    cwd=inputs,  # nothing in the caller's folder shadows a module
                )
            except OSError as error:
                raise ChildUnusable(f"it could not start: {error}") from error
            try:
                yield from _iter_wait(process, model_name=model_name, message=message)
            finally:
                if process.poll() is None:  # closed (cancelled) or failed here
                    process.kill()
                    process.wait()
        if process.returncode != 0:
            reason = _last_line(log) or "no message"
            raise ChildUnusable(f"it failed with status {process.returncode}: {reason}")
        if not out.is_file():
            raise ChildUnusable("it wrote no file")
        for file in sorted(out.parent.iterdir()):  # the graph and its external data
            os.replace(file, path.parent / file.name)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)


def _iter_wait(
    process: subprocess.Popen, *, model_name: str, message: str
) -> Generator[Progress, None, None]:
    """Until ``process`` ends; :class:`ExportError` past :data:`EXPORT_TIMEOUT_S`
    (the caller's ``finally`` kills it)."""
    start = time.monotonic()
    shown = message
    while process.poll() is None:
        yield Progress(0, 1, shown)
        time.sleep(POLL_S)
        elapsed = time.monotonic() - start
        if elapsed > EXPORT_TIMEOUT_S and process.poll() is None:
            raise ExportTimedOut(
                f"the export of the {model_name} image encoder was still running after "
                f"{EXPORT_TIMEOUT_S:.0f} s and was stopped"
            )
        waited = int(elapsed) // _TELL_EVERY_S * _TELL_EVERY_S
        if waited:
            shown = f"exporting the {model_name} image encoder (once per checkpoint): {waited} s"


def _check_signature(encoder: torch.nn.Module, model_name: str) -> None:
    from napari_persam.core.models.registry import get_spec
    from napari_persam.core.models.state_dicts import encoder_signature

    expected = get_spec(model_name).signature
    state = {f"image_encoder.{name}": value for name, value in encoder.state_dict().items()}
    found = encoder_signature(state)
    if expected and found != expected:
        raise ChildUnusable(
            f"this encoder ({found}) is not the registry's {model_name} ({expected})"
        )


def _save_weights(encoder: torch.nn.Module, path: Path) -> None:
    import torch

    state = {name: tensor.detach().cpu() for name, tensor in encoder.state_dict().items()}
    torch.save(state, path)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:_REASON_CHARS] if lines else ""


def describe_modules(module: torch.nn.Module) -> list[Any]:
    """Every submodule's name, class and plain settings (ints, floats, strings...), as JSON.

    Two encoders with the same description and strictly matching weights compute
    the same function: settings such as ``num_heads`` or ``window_size`` are not
    in the state dict, and a class of the caller's own would not be in the child.
    """
    plain = (bool, int, float, str, type(None))
    described = []
    for name, child in module.named_modules():
        settings = {
            key: value
            for key, value in sorted(vars(child).items())
            if not key.startswith("_")
            and key != "training"
            and (
                isinstance(value, plain)
                or (isinstance(value, (tuple, list)) and all(isinstance(v, plain) for v in value))
            )
        }
        kind = f"{type(child).__module__}.{type(child).__qualname__}"
        described.append([name, kind, settings])
    return json.loads(json.dumps(described))  # tuples as lists, as read back


def export_onnx(encoder: torch.nn.Module, *, img_size: int, path: Path) -> None:
    """``torch.onnx.export`` of ``encoder``: (1, 3, S, S) ``pixels`` -> ``embedding``."""
    import torch

    from napari_persam.core.models.export_layout import token_major_blocks

    example = torch.zeros(1, 3, int(img_size), int(img_size))
    chatter = io.StringIO()  # the exporter prints its steps; a failure quotes them
    try:
        keep_triton_out_beside_system_llvm()  # napari's OpenGL: triton would crash it
        with (
            torch.no_grad(),
            token_major_blocks(encoder),  # plain layouts in OpenVINO (export_layout)
            contextlib.redirect_stdout(chatter),
        ):
            torch.onnx.export(
                encoder,
                (example,),
                str(path),
                dynamo=True,
                input_names=["pixels"],
                output_names=["embedding"],
                opset_version=ONNX_OPSET,
                external_data=True,
                verbose=False,
            )
    except Exception as error:
        tail = chatter.getvalue().strip().splitlines()[-3:]
        raise ExportFailed(f"{type(error).__name__}: {error} {' '.join(tail)}".strip()) from error
    if not path.is_file():
        raise ExportFailed("the ONNX exporter wrote no file")


def rebuild_encoder(
    model_name: str, img_size: int, *, weights: str | os.PathLike, modules: list[Any]
) -> torch.nn.Module:
    """The registry's ``model_name`` encoder with ``weights``, in eval mode on the CPU.

    Raises ValueError when its modules differ from ``modules`` (a
    :func:`describe_modules`) or the weights do not fit it strictly.
    """
    import torch

    from napari_persam.core.models.builders import build_architecture, build_tiny_sam
    from napari_persam.core.models.registry import get_spec
    from napari_persam.core.models.state_dicts import skip_random_init

    spec = get_spec(model_name)
    with skip_random_init():  # every weight is loaded below, strictly
        if spec.architecture == "tiny":  # tests build it at other sizes
            sam = build_tiny_sam(img_size=int(img_size))
        else:
            sam = build_architecture(spec.architecture)
    encoder = sam.image_encoder
    described = describe_modules(encoder)
    if len(described) != len(modules):
        raise ValueError(f"the registry's {model_name} encoder has other modules")
    for own, theirs in zip(described, modules):
        if own != theirs:
            raise ValueError(
                f"the registry's {model_name} encoder differs at module {own[0]!r}: "
                f"{own[1:]} here, {theirs[1:]} to export"
            )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    expected = encoder.state_dict()
    wrong = [k for k, v in state.items() if k in expected and v.dtype != expected[k].dtype]
    if wrong:
        raise ValueError(f"weights of another dtype, e.g. {wrong[0]}: {state[wrong[0]].dtype}")
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()  # after loading: eval() also drops caches made from weights (TinyViT)


def main(argv: list[str] | None = None) -> int:
    """The child: rebuild, load, export. 0 when the file is written, else one line on stderr."""
    parser = argparse.ArgumentParser(prog=f"python -m {CHILD_MODULE}", description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--img-size", type=int, required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--modules", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        modules = json.loads(Path(args.modules).read_text(encoding="utf-8"))
        encoder = rebuild_encoder(args.model, args.img_size, weights=args.weights, modules=modules)
    except Exception as error:
        return _fail(f"cannot rebuild the encoder: {type(error).__name__}: {error}", status=2)
    try:
        export_onnx(encoder, img_size=args.img_size, path=Path(args.out))
    except Exception as error:
        return _fail(str(error), status=1)
    return 0


def _fail(reason: str, *, status: int) -> int:
    sys.stderr.write(" ".join(reason.split())[:_REASON_CHARS] + "\n")
    sys.stderr.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
