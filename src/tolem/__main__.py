from tolem.cli import main

main()
