"""Step download_descriptions: TEXTSPAN's description pool at a pinned commit
(:mod:`mass_pipeline.sources.descriptions`)."""

from __future__ import annotations

from mass_pipeline.sources.descriptions import fetch_descriptions, read_descriptions
from mass_pipeline.sources.download import LockFile
from mass_pipeline.steps._cli import step_parser


def main(argv: list[str] | None = None) -> None:
    parser = step_parser(__doc__)
    parser.add_argument("--repo", required=True, help="GitHub repository, owner/name")
    parser.add_argument("--commit", required=True, help="40-hex commit sha")
    parser.add_argument("--path", required=True, help="file inside the repository")
    parser.add_argument("--sha256", help="expected sha256 (else the lock file's, recorded on first download)")
    parser.add_argument("--size", type=int, help="expected size in bytes, with --sha256")
    parser.add_argument("--lock", required=True, help="lock file pinning the size and sha256 of every download")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    record = fetch_descriptions(args.repo, args.commit, args.path, args.out, LockFile(args.lock), args.sha256,
                                args.size)
    print(f"{args.out}: {len(read_descriptions(args.out))} descriptions, {record.size} bytes, sha256 {record.sha256}")


if __name__ == "__main__":
    main()
