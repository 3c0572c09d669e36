"""The temperature logger of ConnectorDB's "Logging data" guide, made real (``make demo``).

The code lives in ``connectorsync/demo.py`` so that ``connectorsync demo`` can run it from an
installed package too: read it there. In short::

    def initlogger(logger):
        logger.apikey = apikey
        logger.serverurl = server.url
        logger.addStream("temperature", {"type": "number"})

    logger = Logger("cache.db", on_create=initlogger)
    logger.start()                          # background sync
    logger.insert("temperature", 21.5)      # on disk when this returns
"""

from connectorsync.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
