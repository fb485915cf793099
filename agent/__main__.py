# SPDX-License-Identifier: Apache-2.0
"""``python -m agent`` is the same as the ``predis-agent`` command."""

from agent.cli import main

if __name__ == "__main__":
    main()
