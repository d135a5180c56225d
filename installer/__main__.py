"""`python3 -m installer …` (also the entry of installer.pyz)."""

from installer.cli import main

main()
