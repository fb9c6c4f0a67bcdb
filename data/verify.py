"""Decode every image of a dataset once and list the files that fail.

    python -m data.verify --data-path <root>            # root/train and root/val (or root itself)
    python -m data.verify --data-path <imagenet> --threads 16 > bad_files.txt

Training only verifies headers up front (PIL `verify()`, see data/folder.py), which a JPEG cut short
passes; this command decodes the pixels of every file, as training will, with a progress bar on
stderr. It prints one `<path>\t<reason>` line per bad file on stdout and a summary on stderr, and
exits with 0 when every image decodes, 1 when some do not, 2 for a path that is not a dataset.
Ctrl-C stops it early: the bad files found until then are printed, the summary says how many images
were decoded, and the exit status is 130. Hidden folders and files are skipped, as in training.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from data.folder import DataError, image_paths, read_rgb

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _decode(path):
    try:
        read_rgb(path)
    except DataError as e:
        return str(e).split("': ", 1)[-1]  # the reason, without the repeated file name
    return None


def splits(root):
    """The ImageFolder splits under `root`: train/ and val/ where present, else root itself."""
    if not os.path.isdir(root):
        raise DataError(f"data path '{root}' is not a folder")
    found = [os.path.join(root, split) for split in ('train', 'val') if os.path.isdir(os.path.join(root, split))]
    return found or [root]


def find_undecodable(paths, threads, progress=True):
    """([(path, reason)] for the files that fail to decode, in the order of `paths`; files decoded).

    Ctrl-C ends it early: the files not yet started are dropped, and the result covers those decoded."""
    pool = ThreadPoolExecutor(threads)  # PIL releases the GIL while decoding
    futures = [pool.submit(_decode, path) for path in paths]
    try:
        for future in tqdm(futures, unit='img', disable=not progress, file=sys.stderr, mininterval=1.0):
            future.result()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # the decodes under way finish, no others start
    else:
        pool.shutdown()
    done = [(path, future.result()) for path, future in zip(paths, futures)
            if future.done() and not future.cancelled() and future.exception() is None]
    return [(path, reason) for path, reason in done if reason is not None], len(done)


def main(argv=None):
    parser = argparse.ArgumentParser('python -m data.verify', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-path', required=True, help='dataset root with train/ and val/, or one split')
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='decoding threads')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    try:
        paths = [path for split in splits(args.data_path) for path in image_paths(split)]
    except DataError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    start = time.time()
    bad, decoded = find_undecodable(paths, max(1, args.threads), progress=not args.no_progress)
    for path, reason in bad:
        print(f'{path}\t{reason}')
    summary = f'{len(bad)} cannot be decoded' if bad else 'all good'
    if decoded < len(paths):
        print(f'interrupted: {decoded} of {len(paths)} images decoded in {time.time() - start:.1f} s, '
              f"{summary if bad else 'none bad'} so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f'{len(paths)} images decoded in {time.time() - start:.1f} s: {summary}', file=sys.stderr)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
