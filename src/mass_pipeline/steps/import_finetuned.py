"""Step import_finetuned: a fine-tuned image encoder the config gives (``finetuned.files``) as visual safetensors.

The file may be in any layout the sources publish (:func:`mass_pipeline.sources.fetch.read_encoder`): an open_clip
CLIP or image-tower state dict, the task-vector code's pickled ``ImageEncoder`` (read without running its
code), the final code's ``ImageEncoder`` state dict, or a transformers ``CLIPVisionModel`` / ``CLIPModel``
(safetensors or bin), whose missing projection is theta_pre's. It must be an image encoder of the
backbone's shapes. The stored copy records the task, the architecture, the file and its sha256.
"""

from __future__ import annotations

from pathlib import Path

from mass.io import file_sha256, load_tensors, save_tensors
from mass_pipeline.sources.fetch import check_visual, read_encoder
from mass_pipeline.steps._cli import step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--model", required=True, help="open_clip architecture of the backbone")
    parser.add_argument("--task", required=True)
    parser.add_argument("--file", required=True, help="the encoder given in finetuned.files")
    parser.add_argument("--pretrained", required=True, help="theta_pre (CLIP safetensors): its projection")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    path = Path(args.file)
    tensors = read_encoder(path, load_tensors(args.pretrained)["visual.proj"])
    check_visual(args.model, tensors, path)
    save_tensors(args.out, tensors, {"model": args.model, "task": args.task, "source": str(path.resolve()),
                                     "source_sha256": file_sha256(path)})
    print(f"wrote {args.out} from {path}")


if __name__ == "__main__":
    main()
