from incasem_like.cli.main import main

if __name__ == "__main__":  # spawned data workers import this module without running it
    raise SystemExit(main())
