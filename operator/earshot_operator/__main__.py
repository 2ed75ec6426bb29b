"""``python -m earshot_operator``: run the operator."""

from earshot_operator.running import main

main()
