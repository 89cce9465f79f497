import sys

from jcnn.cli import main

sys.exit(main())
