from bulkinfer.cli.main import main

main()
