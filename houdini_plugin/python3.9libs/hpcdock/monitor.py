"""``hpcdock-monitor``: the Houdini panel as a standalone window, for people not in Houdini."""

import argparse
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcdock-monitor", description=__doc__)
    parser.add_argument(
        "--url", help="service address (default: $HPCDOCK_URL, else your own service's socket)"
    )
    parser.add_argument("--token", help="bearer token (default: read from the hpcdock config dir)")
    parser.add_argument("--job", type=int, help="show this job first")
    parser.add_argument("--size", default="1200x760", help="window size, WxH (default 1200x760)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .panel.qt import QtWidgets, binding_problem, exec_app
    except ImportError as exc:
        print(f"hpcdock-monitor needs Qt: pip install 'hpcdock[qt]' ({exc})", file=sys.stderr)
        return 2

    from .panel import create_panel

    problem = binding_problem()
    if problem:
        print(f"hpcdock-monitor: warning: {problem}", file=sys.stderr)

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = QtWidgets.QMainWindow()
    window.setWindowTitle("hpcdock monitor")
    panel = create_panel(url=args.url, token=args.token, parent=window)
    window.setCentralWidget(panel)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        width, height = 1200, 760
    window.resize(width, height)
    if args.job is not None:
        panel.select_job(args.job)
    window.show()
    app.aboutToQuit.connect(panel.shutdown)
    return exec_app(app)


if __name__ == "__main__":
    sys.exit(main())
