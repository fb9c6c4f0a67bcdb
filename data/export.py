"""Export a dataset once, atomically, into an ImageFolder under a cache folder (the digits, Fashion-MNIST).

    root = export_once(cache_root, 'digits_32', lambda out_dir: write_images(out_dir), 'the digits dataset')

The images are written into a temporary folder next to the final one, which is then renamed, so a
killed export never leaves a half-written dataset, and when several processes export at once the
first rename wins and the others use its folder. Temporaries left by killed exports on this host
are removed by the next export; those of live writers or of other hosts (a shared file system) are
left alone and never read.
"""
import logging
import os
import shutil
import socket
import tempfile

from .folder import DataError

logger = logging.getLogger(__name__)


def _temp_prefix(name):
    # Host and pid in the name let a later export recognise temporaries whose writer has died.
    return f'.{name}.tmp.{socket.gethostname()}.{os.getpid()}.'


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_dead_temporaries(cache_root, name):
    host_prefix = f'.{name}.tmp.{socket.gethostname()}.'
    for entry in os.scandir(cache_root):
        if not (entry.is_dir() and entry.name.startswith(host_prefix)):
            continue
        pid = entry.name[len(host_prefix):].split('.')[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            logger.info('removing %s, left by an interrupted export', entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)


def export_once(cache_root, name, write_images, what):
    """`cache_root/name`, written by `write_images(temp_dir)` unless it exists already.

    `write_images` fills a fresh temporary folder (e.g. with train/ and val/ ImageFolders); `what`
    names the dataset in error messages. Raises DataError when the folder cannot be written.
    """
    final_dir = os.path.join(cache_root, name)
    if os.path.isdir(final_dir):
        return final_dir
    try:
        os.makedirs(cache_root, exist_ok=True)
        _remove_dead_temporaries(cache_root, name)
        temp_dir = tempfile.mkdtemp(prefix=_temp_prefix(name), dir=cache_root)
    except OSError as e:
        raise DataError(f"cannot create the folder for {what} in '{cache_root}': {e}") from e
    try:
        logger.info('exporting %s to %s', what, final_dir)
        write_images(temp_dir)
        os.rename(temp_dir, final_dir)
    except OSError as e:
        if not os.path.isdir(final_dir):
            raise DataError(f"cannot export {what} to '{final_dir}': {e}") from e
        # Another process renamed its export first: use that one.
    finally:
        if os.path.isdir(temp_dir):
            shutil.rmtree(temp_dir, ignore_errors=True)
    return final_dir
