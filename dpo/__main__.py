from dpo.cli import main

main()
