"""The application: greets whoever --name says."""
import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="world")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    print("ok" if args.check else f"hello {args.name} from python-app")


if __name__ == "__main__":
    main()
