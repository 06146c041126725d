from flexsync.cli import main

main()
