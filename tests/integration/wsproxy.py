"""wsproxy — the "browser" of the target-session tests: an independent
WebSocket client (Python websockets) that joins a session as the
initiator and pipes its standard input and output through it, so that
`ssh -o ProxyCommand="python3 wsproxy.py URL CA"` reaches the target the
relay dials.  The slot token comes from $SWSRS_TOKEN (sent as
Authorization: Bearer).  Standard input's EOF closes the WebSocket 1000;
the relay's close ends standard output; exit status 0 for a close 1000,
else 3 with the code and reason on stderr.
"""

import asyncio
import os
import ssl
import sys

import websockets


async def main(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    token = os.environ["SWSRS_TOKEN"]
    loop = asyncio.get_running_loop()
    async with websockets.connect(url, ssl=ctx, max_size=None, compression=None,
                                  ping_interval=None,
                                  extra_headers={"Authorization": "Bearer " + token}) as ws:
        async def up():
            while True:
                data = await loop.run_in_executor(None, os.read, 0, 65536)
                if not data:
                    await ws.close(1000)
                    return
                await ws.send(data)

        sender = asyncio.ensure_future(up())
        try:
            async for m in ws:
                os.write(1, m if isinstance(m, bytes) else m.encode())
        except websockets.ConnectionClosed:
            pass
        sender.cancel()
        code, reason = ws.close_code, ws.close_reason
    os.close(1)
    if code != 1000:
        sys.stderr.write("wsproxy: closed %s %s\n" % (code, reason))
        return 3
    return 0


if __name__ == "__main__":
    os._exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
