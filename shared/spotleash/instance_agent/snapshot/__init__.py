"""Snapshots of an instance's state paths, made and restored on the instance itself.

**Snapshot** (``take.take_snapshot``): pack the state paths (default ``/workspace`` on VAST; on GCE the
configured ones, none by default) into zstd-compressed tar parts of about ``part_bytes`` of content
each, hashing every part (sha256, MD5) as it is written; ask the control plane over the heartbeat
for one URL per object (``UploadAsk`` → ``UploadGrant``); upload the parts, then ``manifest.json``;
report it (``UploadedAsk``) and wait for the control plane's verdict. Only a ``verified`` verdict
means the snapshot exists; a failed upload is reported (``AbandonedAsk``) so the control plane
alerts, and the previous snapshot stays the one restored.

**Restore** (``restore.restore``): before components start, ask which snapshot to restore (``RestoreAsk`` →
``RestoreGrant``), download its manifest and check its sha256 against the one the control plane
recorded, download every part checking size and sha256, and only then extract — into a staging
directory beside each state path, refusing any member that is not a regular file, a directory or a
symlink staying inside its root (tarfile's ``data`` filter: no absolute paths, no ``..``, no links
out, no devices). A snapshot that fails any check is named in the next ``RestoreAsk.failed``; the
control plane marks it CORRUPT, audits it and grants the one before.

What is packed: regular files, directories and symlinks whose target stays inside their root.
Symlinks pointing outside, sockets, FIFOs and devices are left out and listed in the manifest's
``skipped``; a file that shrinks while it is read is padded and listed there too (the workload keeps
running while the snapshot is taken).

The control plane is reached through a ``Channel`` (``HeartbeatChannel`` posts a heartbeat carrying
the ask). URLs are bearer secrets: they are never logged (only the object names).
"""
