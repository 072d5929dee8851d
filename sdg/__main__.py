from sdg.cli import main

main()
