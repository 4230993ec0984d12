"""Stand-ins for a media child a decoder exploit has taken over: it speaks the protocol,
or not, and wants the serving process to pay. ``python hostile_child.py MODE``."""

from __future__ import annotations

import sys
import threading

from bgsvc.video import protocol

INFO = {
    "width": 16,
    "height": 16,
    "frames": 3,
    "duration_s": 0.12,
    "rate_num": 25,
    "rate_den": 1,
    "rotation": 0,
    "codec": "h264",
}


def joiner(mode: str) -> None:
    """Honest in every mode but the join, where it answers ``mode``."""
    from bgsvc.errors import BgsvcError
    from bgsvc.imaging import video_codec
    from bgsvc.video import child

    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    config = protocol.read(inbox, 0).meta
    upload = protocol.read(inbox, int(config["max_upload_bytes"])).payload
    if config["mode"] != "join":
        try:
            child._run(config, upload, inbox, outbox)
        except BgsvcError as exc:
            protocol.write(outbox, "E", {"code": exc.code, "message": exc.message})
        return
    parts = []
    while (message := protocol.read(inbox, int(config["max_part_bytes"]))).kind == "P":
        parts.append(message.payload)
    if mode == "join_huge":
        # The parts of a small video, then a joined file it says is 1 GiB (never sent).
        outbox.write(protocol.HEAD.pack(b"D", 0, 1 << 30))
        outbox.flush()
        threading.Event().wait(30)
        return
    # The real joined file, with a count of none: were it believed, every credit back.
    body, _frames = video_codec.join(config["format"], parts, video_codec.open_input(upload))
    protocol.write(outbox, "D", {"frames": 0}, body)


def main(mode: str) -> None:
    if mode.startswith("join_"):
        joiner(mode)
        return
    inbox, outbox = sys.stdin.buffer, sys.stdout.buffer
    protocol.read(inbox, 0)
    protocol.read(inbox, 1 << 30)
    if mode == "flood":
        # Where one short answer is due: 64 MiB, then silence.
        chunk = bytes(1 << 20)
        for _ in range(64):
            outbox.write(chunk)
        outbox.flush()
        return

    def drop() -> None:
        # Whatever the parent sends back is read and dropped: it never blocks on us.
        while inbox.read(1 << 16):
            pass

    threading.Thread(target=drop, daemon=True).start()
    if mode == "garbled":
        protocol.write(outbox, "I", {"info": {**INFO, "frames": "3", "extra": 1}, "size": [16]})
        return
    if mode == "whole":
        # Asked for a segment's frames, it sends a whole long video's, within the margin
        # its header claims (forty frames), and ends as if that were the range.
        protocol.write(outbox, "I", {"info": {**INFO, "frames": 40}, "size": [16, 16]})
        for index in range(40):
            protocol.write(outbox, "F", {"index": index}, bytes(16 * 16 * 3))
        protocol.write(outbox, "N", {"frames": 40})
        return
    if mode == "bad_stream":
        # Stream parameters for the encoder that no decoder reads from a file: the
        # encoder serves other videos after this one.
        stream = {"time_base": [1, 0], "rate": [24, 1], "colour": {}}
        protocol.write(outbox, "I", {"info": INFO, "size": [16, 16], "stream": stream})
        for index in range(3):
            protocol.write(outbox, "F", {"index": index, "pts": index}, bytes(16 * 16 * 3))
        protocol.write(outbox, "N", {"frames": 3})
        return
    if mode == "skipping":
        # A segment's child that says it is still on its way to its range, for ever.
        protocol.write(outbox, "I", {"info": {**INFO, "frames": 40}, "size": [16, 16]})
        while True:
            protocol.write(outbox, "S", {"skipped": 16})
    protocol.write(outbox, "I", {"info": INFO, "size": [16, 16]})
    frame = bytes(16 * 16 * 3)
    if mode == "huge_result":
        # Its frames as asked, then a result it says is 1 GiB (it never sends it).
        for index in range(3):
            protocol.write(outbox, "F", {"index": index}, frame)
        protocol.write(outbox, "N", {"frames": 3})
        outbox.write(protocol.HEAD.pack(b"D", 0, 1 << 30))
        outbox.flush()
        threading.Event().wait(30)
        return
    index = 0
    while mode == "endless":
        protocol.write(outbox, "F", {"index": index}, frame)
        index += 1


if __name__ == "__main__":
    main(sys.argv[1])
