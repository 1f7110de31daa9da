/**
 * Herald browser client: a WebSocket to Herald that logs in, reconnects, and hands messages to
 * the page. No dependencies. `herald.mjs` is the ES module; `herald.js` is the same code as a
 * plain script exposing `window.Herald` (made from this file by `node build.mjs`).
 *
 *   import Herald from './herald.mjs';
 *   const h = new Herald({
 *     url: 'wss://push.example.com/ws',
 *     token: () => fetch('/herald-token').then((r) => r.text()),  // or uid: 'u1' (seed mode)
 *     onmessage: (data) => console.log(data),
 *   });
 *   h.connect();
 *   // later: h.close();
 *
 * Login: in `auth = "uid"` mode the first message is the uid (`uid` option); in `hmac` and `jwt`
 * modes it is the token (`token` option), sent as the first message, or on the URL as
 * `?token=` with `tokenIn: 'query'`. A token is fetched again for every connection when
 * `token` is a function (tokens expire; a reconnect needs a fresh one).
 *
 * Reconnecting: after any drop the client waits minDelay, then twice as long each time up to
 * maxDelay, each delay shortened by a random part of up to `jitter` of it (so that thousands of
 * pages dropped at once do not come back at once). The back-off starts over once a connection
 * has stayed up for `stableAfter` ms. It does not reconnect after close(), after a kick (close
 * 1000 `kicked`, unless `reconnectOnKick`), after a refused uid (1008, 1003) or a refused
 * token that cannot change (4001 with a string token).
 *
 * Heartbeats: Herald pings every connection with WebSocket pings (every `ping_interval`, 25 s),
 * and the browser answers them by itself, without telling the page. So the page cannot see the
 * server's pings; a dead server is noticed when the browser's TCP connection fails, which can
 * take minutes. For faster detection, have your backend send a message every N seconds (for
 * example a text-port `{"cmd":"all","data":"hb"}` from a cron job) and set `silenceTimeout`
 * a little above N and `isHeartbeat: (d) => d === 'hb'`: a connection that receives nothing at
 * all for `silenceTimeout` ms is dropped and replaced. `heartbeatInterval` makes the page send
 * an empty text message that often (Herald ignores messages after login that have no `:`),
 * which keeps idle NAT mappings and proxies from timing out the upstream direction.
 *
 * Recovery: with `history: true` (the server needs `history_size` > 0) the client asks for
 * positions (`?envelope=1`), remembers the last one it saw (`position`, `{ epoch, offset }`;
 * give `position` in the options to start from one kept elsewhere, e.g. localStorage), and
 * after a drop reconnects with `?since=EPOCH:OFFSET`: the server sends what was missed, then
 * live messages, each once. `onrecovery({ recovered, epoch, offset })` tells the outcome; when
 * the gap could not be filled (`recovered: false`), `recover` is called so the page can reload
 * from its backend. Without `history`, `recover` is called after every re-established
 * connection with `{ lastMessageAt }` (ms since the epoch), to fetch what was missed.
 */
export class Herald {
  /**
   * @param {string|object} options The WebSocket URL, or an object:
   *   url                 ws:// or wss:// URL of Herald's WebSocket port (required)
   *   uid                 the uid to log in as (auth = "uid")
   *   token               a token string, or a function returning one or a Promise of one
   *   tokenIn             'message' (default) or 'query' (`?token=` on the URL)
   *   reconnect           reconnect after a drop (default true)
   *   minDelay, maxDelay  back-off bounds in ms (default 1000, 30000)
   *   jitter              0..1: how much of each delay may be cut at random (default 0.5)
   *   stableAfter         ms a connection must stay up to reset the back-off (default 5000)
   *   connectTimeout      ms for the WebSocket to open before it is abandoned (default 10000)
   *   silenceTimeout      ms without any message before the connection is dropped (default 0:
   *                       off; see Heartbeats above)
   *   isHeartbeat         function(data): true for an app-level heartbeat, not given to onmessage
   *   heartbeatInterval   ms between empty messages sent to the server (default 0: off)
   *   reconnectOnKick     reconnect after a kick too (default false)
   *   binaryType          'arraybuffer' (default) or 'blob', for binary messages
   *   history             ask for positions and recover after a drop (default false; see
   *                       Recovery above)
   *   position            `{ epoch, offset }` to recover from at the first connection
   *   recover             function({ lastMessageAt, recovered }): the page should reload what
   *                       it shows (after each re-established connection, or with `history`
   *                       when a gap could not be filled)
   *   onmessage, onopen, onclose, onreconnect, onerror, onrecovery   the callbacks (also
   *                       settable later)
   *   WebSocket           the WebSocket class to use (default: the global one)
   */
  constructor(options) {
    const o = Object.assign({}, Herald.defaults, typeof options === 'string' ? { url: options } : options);
    if (!o.url) throw new Error('Herald: the url option is required');
    if (o.uid == null && o.token == null) throw new Error('Herald: give a uid or a token');
    this.options = o;
    /** function(data, event): a message (text as a string, binary as an ArrayBuffer or Blob) */
    this.onmessage = o.onmessage || null;
    /** function({ reconnected }): the connection is open and the login was sent */
    this.onopen = o.onopen || null;
    /** function({ code, reason, wasClean, willReconnect }): the connection ended */
    this.onclose = o.onclose || null;
    /** function({ attempt, delay }): a reconnection is scheduled in `delay` ms */
    this.onreconnect = o.onreconnect || null;
    /** function(error): a token could not be had, or a callback threw */
    this.onerror = o.onerror || null;
    /** function({ recovered, epoch, offset }): with `history`, the outcome of a recovery */
    this.onrecovery = o.onrecovery || null;
    /** with `history`: the last position seen, `{ epoch, offset }`, or null */
    this.position = o.position || null;
    /** 'idle', 'connecting', 'open' or 'closed' */
    this.state = 'idle';
    /** reconnection attempts since the last stable connection */
    this.attempt = 0;
    /** when the last message arrived (ms since the epoch), 0 before any */
    this.lastMessageAt = 0;
    this._ws = null;
    this._stopped = true;
    // Counts connection starts and close() calls: a token that arrives for an older one is
    // dropped.
    this._generation = 0;
    this._opened = false;
    this._timers = {};
    this._onOnline = () => {
      if (!this._stopped && this.state !== 'open' && this._timers.retry) {
        this._clear('retry');
        this._open();
      }
    };
  }

  /** Opens the connection (and keeps it up until close()). */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    if (typeof addEventListener === 'function') addEventListener('online', this._onOnline);
    this._open();
    return this;
  }

  /** Closes the connection for good (no reconnection); onclose follows when it has ended. */
  close(code = 1000, reason = '') {
    this._stopped = true;
    this._generation += 1;
    if (typeof removeEventListener === 'function') removeEventListener('online', this._onOnline);
    for (const name of Object.keys(this._timers)) this._clear(name);
    this.state = 'closed';
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    // Detached, so that a connect() made before its closing handshake ends starts afresh.
    ws.onopen = ws.onmessage = ws.onerror = null;
    ws.onclose = (event) => {
      this._emit('onclose', {
        code: event.code,
        reason: event.reason,
        wasClean: event.wasClean,
        willReconnect: false,
      });
    };
    try {
      ws.close(code, reason);
    } catch (e) {
      ws.close();
    }
  }

  /** Sends a message on the open connection (for servers with `client_relay`); false if not open. */
  send(data) {
    if (this.state !== 'open' || !this._ws) return false;
    this._ws.send(data);
    return true;
  }

  _open() {
    this.state = 'connecting';
    const o = this.options;
    const generation = ++this._generation;
    let credential;
    try {
      credential = Promise.resolve(typeof o.token === 'function' ? o.token() : o.token);
    } catch (e) {
      credential = Promise.reject(e);
    }
    credential.then(
      (token) => {
        if (generation === this._generation) this._dial(token == null ? null : String(token));
      },
      (error) => {
        if (generation !== this._generation) return;
        this._emit('onerror', error);
        this._retry(0);
      },
    );
  }

  _dial(token) {
    const o = this.options;
    let url = o.url;
    const param = (k, v) => {
      url += (url.indexOf('?') < 0 ? '?' : '&') + k + '=' + encodeURIComponent(v);
    };
    if (token != null && o.tokenIn === 'query') param('token', token);
    if (o.history) {
      const p = this.position;
      if (p && p.epoch != null && p.offset != null) param('since', p.epoch + ':' + p.offset);
      else param('envelope', '1');
    }
    const Impl = o.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(url);
    } catch (e) {
      this._emit('onerror', e);
      this._retry(0);
      return;
    }
    ws.binaryType = o.binaryType;
    this._ws = ws;
    this._after('connect', o.connectTimeout, () => this._drop(ws, 'connect timeout'));
    ws.onopen = () => {
      this._clear('connect');
      const login = token != null ? (o.tokenIn === 'query' ? null : token) : String(o.uid);
      if (login != null) ws.send(login);
      this.state = 'open';
      const reconnected = this._opened;
      this._opened = true;
      this._after('stable', o.stableAfter, () => {
        this.attempt = 0;
      });
      this._watchSilence(ws);
      if (o.heartbeatInterval > 0) {
        this._every('beat', o.heartbeatInterval, () => {
          if (ws.readyState === 1) ws.send('');
        });
      }
      this._emit('onopen', { reconnected });
      if (reconnected && !o.history && typeof o.recover === 'function') {
        this._call(() => o.recover.call(this, { lastMessageAt: this.lastMessageAt }));
      }
    };
    ws.onmessage = (event) => {
      this.lastMessageAt = Date.now();
      this._watchSilence(ws);
      let data = event.data;
      if (o.history && typeof data === 'string' && data.charAt(0) === '{') {
        data = this._enveloped(data);
        if (data === undefined) return;
      }
      if (typeof o.isHeartbeat === 'function' && o.isHeartbeat(data)) return;
      this._emit('onmessage', data, event);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => this._ended(ws, event.code, event.reason, event.wasClean);
  }

  /**
   * With `history`: reads an envelope (position, recovery, message). Returns the message's
   * data for onmessage, or undefined when the frame was the server's word on positions.
   */
  _enveloped(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch (e) {
      return text;
    }
    if (!m || typeof m.type !== 'string') return text;
    if (m.epoch != null && m.offset != null) this.position = { epoch: m.epoch, offset: m.offset };
    if (m.type === 'position') return undefined;
    if (m.type === 'recovery') {
      this._emit('onrecovery', { recovered: !!m.recovered, epoch: m.epoch, offset: m.offset });
      if (!m.recovered && typeof this.options.recover === 'function') {
        const info = { lastMessageAt: this.lastMessageAt, recovered: false };
        this._call(() => this.options.recover.call(this, info));
      }
      return undefined;
    }
    if (m.type !== 'msg') return text;
    if (!m.binary) return m.data;
    const bytes = atob(m.data);
    const out = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
    return out.buffer;
  }

  /** Restarts the silence timer of `ws`. */
  _watchSilence(ws) {
    if (this.options.silenceTimeout > 0) {
      this._after('silence', this.options.silenceTimeout, () => this._drop(ws, 'silence'));
    }
  }

  /** Gives up on `ws` at once (no waiting for a closing handshake a dead peer never answers). */
  _drop(ws, why) {
    try {
      ws.close();
    } catch (e) {
      // already closed
    }
    this._ended(ws, 1006, why, false);
  }

  _ended(ws, code, reason, wasClean) {
    if (ws !== this._ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
    for (const name of ['connect', 'stable', 'silence', 'beat']) this._clear(name);
    const o = this.options;
    const refused =
      code === 1008 ||
      code === 1003 ||
      (code === 4001 && typeof o.token !== 'function') ||
      (code === 1000 && reason === 'kicked' && !o.reconnectOnKick);
    const willReconnect = !this._stopped && o.reconnect && !refused;
    this.state = willReconnect ? 'connecting' : 'closed';
    this._emit('onclose', { code, reason, wasClean, willReconnect });
    if (willReconnect) this._retry(code);
  }

  _retry(code) {
    const o = this.options;
    this.attempt += 1;
    const base = Math.min(o.maxDelay, o.minDelay * Math.pow(2, this.attempt - 1));
    const delay = Math.round(base * (1 - o.jitter * Math.random()));
    this.state = 'connecting';
    this._emit('onreconnect', { attempt: this.attempt, delay, code });
    this._after('retry', delay, () => {
      if (!this._stopped) this._open();
    });
  }

  _after(name, ms, f) {
    this._clear(name);
    this._timers[name] = { id: setTimeout(() => {
      delete this._timers[name];
      f();
    }, ms), repeat: false };
  }

  _every(name, ms, f) {
    this._clear(name);
    this._timers[name] = { id: setInterval(f, ms), repeat: true };
  }

  _clear(name) {
    const t = this._timers[name];
    if (!t) return;
    if (t.repeat) clearInterval(t.id);
    else clearTimeout(t.id);
    delete this._timers[name];
  }

  _emit(name, ...args) {
    const f = this[name];
    if (typeof f === 'function') this._call(() => f.apply(this, args));
  }

  _call(f) {
    try {
      f();
    } catch (e) {
      if (this.onerror && f !== this.onerror) {
        try {
          this.onerror(e);
        } catch (ignored) {
          // an onerror that throws is not called again for its own error
        }
      }
    }
  }
}

/** The options' defaults (see the constructor). */
Herald.defaults = {
  url: '',
  uid: null,
  token: null,
  tokenIn: 'message',
  reconnect: true,
  minDelay: 1000,
  maxDelay: 30000,
  jitter: 0.5,
  stableAfter: 5000,
  connectTimeout: 10000,
  silenceTimeout: 0,
  isHeartbeat: null,
  heartbeatInterval: 0,
  reconnectOnKick: false,
  binaryType: 'arraybuffer',
  recover: null,
  history: false,
  position: null,
  WebSocket: null,
};

/** This client's version. */
Herald.version = '1.0.0';

export default Herald;
