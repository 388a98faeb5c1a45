"""`incasem-like export`: a dataset -> a folder of 2D TIFF slices (Fiji, other tools), optionally uncropped."""

import argparse
import textwrap
from pathlib import Path

from incasem_like.cli.commands import formatter, run_command


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="dataset -> one 2D TIFF per z slice (for Fiji and other tools), optionally in the original frame",
        description=textwrap.dedent(
            """\
            Write a dataset as 2D TIFF slices slice_0000.tif, slice_0001.tif, ... (the z index, zero-padded to
            sort in z order; incasem-like convert reads the folder back), in the dataset's dtype. Labels, masks
            and probability maps are zlib-compressed (mostly 0: ~10-100x smaller); images are not (EM
            intensities shrink to only ~0.85x, at a tenth of the speed).

            Values: images and probability maps (uint8 0..255 = 0..1) are written as stored. 0/1 labels, masks
            and segmentations are written as 0/255, Fiji's binary convention (a 0/1 image looks black there, and
            convert --labels turns 0/255 back into 0/1); --keep-values writes them as 0/1. Labels with other
            values (instance ids) are always kept.

            --uncrop places the data back in the frame of the TIFF stack it came from: the crop that convert
            --roi recorded, followed through the datasets derived from it (a prediction of a cropped raw lies
            where its offset in nm puts it). Slices and voxels outside the data are 0, and the file names are the
            original slice numbers.

            Slabs one chunk deep are read and written by --threads threads (each holds one slab: chunk depth x
            the slice size). The slices go to a hidden temporary folder renamed to OUT_DIR when all are
            written, so an interrupted export never looks complete; rerunning starts it over."""
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              incasem-like export cell_6.zarr/volumes/predictions/run1/mito/segmentation mito_tiffs
              incasem-like export crop.zarr/volumes/predictions/run1/mito/probabilities prob_tiffs --uncrop
              incasem-like export cell_6.zarr/volumes/raw raw_tiffs --threads 4 --overwrite
              incasem-like export tomo.zarr/volumes/predictions/run1/membrane/segmentation membrane.mrc --format mrc"""
        ),
        formatter_class=formatter,
    )
    parser.add_argument("dataset", metavar="DATASET", help="dataset to export, e.g. cell_6.zarr/volumes/raw")
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", type=Path, help="folder for the slices (must not exist), or the .mrc file"
    )
    parser.add_argument(
        "--format",
        choices=("tiff", "mrc"),
        default="tiff",
        help="tiff: one TIFF per z slice in OUT_DIR (default); mrc: one MRC file OUT_DIR with the voxel size",
    )
    parser.add_argument("--uncrop", action="store_true", help="place the data in its original (pre-crop) frame")
    parser.add_argument("--keep-values", action="store_true", help="write 0/1 labels and masks as 0/1, not 0/255")
    parser.add_argument("--threads", type=int, default=2, metavar="N", help="slabs read and written at once (2)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT_DIR (only a folder of TIFF files)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from incasem_like.core.errors import UserError
    from incasem_like.workflow.steps import ExportStep

    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: need at least one thread")
    step = ExportStep(
        dataset=args.dataset,
        out_dir=str(args.out_dir),
        uncrop=args.uncrop,
        keep_values=args.keep_values,
        format=args.format,
    )
    run_command(step, args)
