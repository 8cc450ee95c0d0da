// chatd's page: name, then a room to create or join, then the chat, over
// one WebSocket to the daemon that served this page (docs/web.md). Plain
// JavaScript, no build step, nothing fetched from anywhere else; text is only
// ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  const RETRY_FIRST = 1000;
  const RETRY_MOST = 15000;
  const HOST_WAIT = 120000; // how long a member waits for its host to make the room again
  const HELP = [
    "/me TEXT — an action, shown as * you TEXT",
    "/who — the room's members",
    "/invite — (host) a single-use invitation to give someone",
    "/leave — leave the room and pick another; a host leaving closes the room",
    "/close — (host) close the room for everyone",
    "/retry — send your messages that were not sent again",
    "//TEXT — send /TEXT",
    "Keys: Enter sends, Up and Down recall what you typed, Page Up and Page Down scroll.",
  ];

  const $ = (id) => document.getElementById(id);
  const steps = { name: $("name-step"), room: $("room-step"), chat: $("chat") };

  const session = {
    name: "",
    room: "",
    create: false,
    password: null,
    invite: null,
    host: false, // this page created the room: it makes it again after a server restart
    socket: null,
    entered: false,
    leaving: false, // the page asked to leave: the close that follows is expected
    stopping: false, // the server said it is stopping: the close that follows is to be reconnected
    reconnecting: false,
    retryDelay: RETRY_FIRST,
    retryTimer: null,
    waitingSince: null,
    epoch: null,
    lastSeq: 0,
    nextId: 1,
    pending: new Map(), // message id -> its line, while sending or not sent
    members: [],
    roomHost: null,
    recall: [],
    recallAt: 0,
  };

  // -- what the person sees ---------------------------------------------------

  function show(step) {
    for (const [name, element] of Object.entries(steps)) element.hidden = name !== step;
    const focus = { name: $("name"), room: $("room"), chat: $("text") }[step];
    focus.focus();
  }

  function setState(state, text) {
    const element = $("state");
    element.dataset.state = state;
    element.textContent = text;
  }

  function showError(text) {
    const element = $("error");
    element.textContent = text;
    element.hidden = !text;
  }

  function clock(timeMs) {
    const date = new Date(timeMs);
    const element = document.createElement("time");
    element.dateTime = date.toISOString();
    element.title = date.toLocaleString();
    element.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return element;
  }

  function atBottom() {
    const box = $("conversation");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  }

  function append(line) {
    const follow = atBottom();
    $("log").append(line);
    if (follow) $("conversation").scrollTop = $("conversation").scrollHeight;
    return line;
  }

  function systemLine(text, kind) {
    const line = document.createElement("li");
    line.className = kind || "system";
    line.append(clock(Date.now()), text);
    return append(line);
  }

  function messageLine(sender, text, timeMs, extra) {
    const line = document.createElement("li");
    const action = text.startsWith("/me ");
    line.className = "msg" + (action ? " action" : "") + (extra ? " " + extra : "");
    line.dataset.from = sender;
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = action ? "* " + sender : sender;
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = action ? text.slice(4) : text;
    line.append(clock(timeMs), from, body);
    return line;
  }

  function markState(line, state, mark) {
    line.dataset.state = state;
    let element = line.querySelector(".mark");
    if (!element) {
      element = document.createElement("span");
      element.className = "mark";
      line.append(element);
    }
    element.textContent = mark;
  }

  function showMembers(members, host) {
    session.members = members;
    session.roomHost = host;
    const list = $("members");
    list.replaceChildren(
      ...members.map((name) => {
        const item = document.createElement("li");
        item.textContent = name;
        if (name === host) item.classList.add("host");
        if (name === session.name) item.classList.add("me");
        return item;
      }),
    );
    $("member-count").textContent = "(" + members.length + ")";
  }

  // -- the connection ---------------------------------------------------------

  function socketUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  }

  function send(message) {
    const socket = session.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  function connect() {
    clearTimeout(session.retryTimer);
    session.retryTimer = null;
    setState(session.reconnecting ? "reconnecting" : "connecting", session.reconnecting ? "reconnecting…" : "connecting…");
    const socket = new WebSocket(socketUrl());
    session.socket = socket;
    socket.onopen = () => {
      const enter = { type: "enter", action: session.create ? "create" : "join", room: session.room, name: session.name };
      if (session.password) enter.password = session.password;
      if (session.invite) enter.invite = session.invite;
      socket.send(JSON.stringify(enter));
    };
    socket.onmessage = (event) => {
      if (socket !== session.socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      receive(message);
    };
    socket.onclose = (event) => {
      if (socket === session.socket) closed(event.code);
    };
  }

  function closed(code) {
    session.socket = null;
    const wasIn = session.entered;
    const stopping = session.stopping;
    session.entered = false;
    session.stopping = false;
    failPending();
    if (session.leaving) {
      // Left on purpose, refused, or given up: nothing to come back to.
      session.leaving = false;
      return;
    }
    if (wasIn && code === 1000 && !stopping) {
      // The gateway closes with 1000 when the room is over for this page
      // (it said /exit, say): coming back would be a join nobody asked for.
      systemLine("You left " + session.room + ". Type /leave to pick another room.", "system");
      setState("idle", "not connected");
      return;
    }
    if (wasIn || session.reconnecting) {
      if (wasIn) {
        session.reconnecting = true;
        // Only the host makes the room again (after a server restart); the others join it.
        session.create = session.host;
        systemLine("Connection lost; reconnecting…", "problem");
      }
      retryLater();
      return;
    }
    showError("Could not connect to the chat server; try again in a moment.");
    setState("idle", "not connected");
  }

  function retryLater() {
    const delay = session.retryDelay;
    session.retryDelay = Math.min(session.retryDelay * 2, RETRY_MOST);
    setState("reconnecting", "reconnecting in " + Math.round(delay / 1000) + " s");
    session.retryTimer = setTimeout(connect, delay);
  }

  function giveUp(text) {
    session.reconnecting = false;
    session.retryDelay = RETRY_FIRST;
    clearTimeout(session.retryTimer);
    setState("idle", "not connected");
    if (steps.chat.hidden) {
      showError(text);
    } else {
      systemLine(text, "problem");
      systemLine("Leave with /leave to pick another room.", "system");
    }
  }

  // -- what the gateway says --------------------------------------------------

  function receive(message) {
    switch (message.type) {
      case "entered":
        return entered(message);
      case "message":
        return heard(message);
      case "sent":
        return sent(message);
      case "refused":
        return refused(message);
      case "notice":
        return notice(message);
      case "members":
        return showMembers(message.members, message.host);
      case "invitation":
        return invitation(message);
      default:
        return undefined;
    }
  }

  function entered(message) {
    const again = session.reconnecting;
    const sameRoom = again && message.epoch === session.epoch;
    session.entered = true;
    session.reconnecting = false;
    session.retryDelay = RETRY_FIRST;
    session.waitingSince = null;
    session.host = message.created;
    session.create = false;
    // An invitation is single-use: a rejoin goes without it.
    session.invite = null;
    showError("");
    setState("connected", "connected");
    $("where").textContent = message.room + " — " + message.name;
    showMembers(message.members, message.host);
    if (!again) {
      $("log").replaceChildren();
      show("chat");
      systemLine(
        (message.created ? "You created " : "You joined ") + message.room + " as " + message.name + ". Type /help for the commands.",
        "system",
      );
    } else {
      systemLine("Reconnected to " + message.room + ".", "system");
    }
    const history = message.history.filter((item) => !sameRoom || item.seq > session.lastSeq);
    if (history.length) {
      const divider = document.createElement("li");
      divider.className = "divider";
      divider.textContent = "history: said before you came in";
      append(divider);
      for (const item of history) {
        const mine = item.from === session.name;
        if (mine && claimPending(item)) continue;
        append(messageLine(item.from, item.text, item.time, "history")).dataset.seq = item.seq;
      }
    }
    session.epoch = message.epoch;
    session.lastSeq = message.latest;
  }

  function claimPending(item) {
    // A message of ours that reached the room before the connection broke.
    for (const [id, line] of session.pending) {
      if (line.dataset.state === "failed" && line.querySelector(".text").textContent === visibleText(item.text)) {
        session.pending.delete(id);
        line.dataset.seq = item.seq;
        markState(line, "sent", "");
        return true;
      }
    }
    return false;
  }

  function visibleText(text) {
    return text.startsWith("/me ") ? text.slice(4) : text;
  }

  function heard(message) {
    session.lastSeq = Math.max(session.lastSeq, message.seq);
    append(messageLine(message.from, message.text, message.time)).dataset.seq = message.seq;
  }

  function sent(message) {
    const line = session.pending.get(message.id);
    if (!line) return;
    session.pending.delete(message.id);
    session.lastSeq = Math.max(session.lastSeq, message.seq);
    line.dataset.seq = message.seq;
    line.querySelector("time").replaceWith(clock(message.time));
    markState(line, "sent", "");
  }

  function refused(message) {
    if (message.id !== undefined) {
      const line = session.pending.get(message.id);
      if (line) markState(line, "failed", "✗ not sent: " + message.text + " (/retry)");
      return;
    }
    if (session.entered) {
      systemLine(message.text, "problem");
      return;
    }
    // The create or join was refused: this connection is done, and its
    // close decides what comes next (another try, or nothing).
    enterRefused(message);
    if (session.socket) session.socket.close();
  }

  function enterRefused(message) {
    if (session.reconnecting) {
      if (message.error === "room_exists" && session.host) {
        session.create = false; // someone made it meanwhile: join it
        return;
      }
      if (message.error === "room_not_found" || message.error === "username_taken" || message.error === "rate_limited") {
        if (session.waitingSince === null) session.waitingSince = Date.now();
        if (Date.now() - session.waitingSince < HOST_WAIT) {
          if (message.error === "room_not_found") setState("reconnecting", "waiting for the host to reopen the room…");
          if (session.host) session.create = true;
          return; // the close follows, and the next try
        }
      }
      session.leaving = true;
      giveUp("Could not get back into the room: " + message.text);
      return;
    }
    session.leaving = true;
    showError(message.text);
    setState("idle", "not connected");
  }

  function notice(message) {
    systemLine(message.text, "system");
    if (message.event === "room_closed") {
      session.leaving = true;
      session.host = false;
      setState("idle", "room closed");
      systemLine("Type /leave to pick another room.", "system");
    } else if (message.event === "server_stopping") {
      // The room comes back when the server does: its host makes it again.
      session.stopping = true;
      session.create = session.host;
    } else if (message.event === "timed_out" && message.user === session.name) {
      session.leaving = true;
      setState("idle", "removed");
    }
  }

  function invitation(message) {
    const minutes = Math.round(message.expires_in / 60);
    const line = systemLine("", "answer");
    line.append(
      "Invitation for " + session.room + ", valid " + minutes + " min, single use: ",
    );
    const code = document.createElement("code");
    code.className = "invite";
    code.textContent = message.invite;
    line.append(code, " — the person you give it to joins room " + session.room + " with it as the invitation.");
  }

  // -- what the person does ---------------------------------------------------

  function failPending() {
    for (const line of session.pending.values()) {
      if (line.dataset.state === "sending") markState(line, "failed", "✗ not sent (/retry)");
    }
  }

  function say(text) {
    const id = session.nextId++;
    const line = append(messageLine(session.name, text, Date.now(), "mine"));
    session.pending.set(id, line);
    line.dataset.id = id;
    line.dataset.text = text;
    if (send({ type: "say", id: id, text: text })) {
      markState(line, "sending", "sending…");
    } else {
      markState(line, "failed", "✗ not sent (/retry)");
    }
  }

  function retry() {
    const failed = [...session.pending.entries()].filter(([, line]) => line.dataset.state === "failed");
    if (!failed.length) {
      systemLine("= nothing to send again", "answer");
      return;
    }
    for (const [id, line] of failed) {
      if (send({ type: "say", id: id, text: line.dataset.text })) markState(line, "sending", "sending…");
    }
  }

  function leave() {
    session.leaving = true;
    session.host = false;
    session.reconnecting = false;
    clearTimeout(session.retryTimer);
    if (!send({ type: "leave" }) && session.socket) session.socket.close();
    session.pending.clear();
    setState("idle", "not connected");
    $("where").textContent = "";
    show("room");
  }

  function command(line) {
    const [word, ...rest] = line.slice(1).split(" ");
    const argument = rest.join(" ").trim();
    switch (word.toLowerCase()) {
      case "help":
        for (const help of HELP) systemLine(help, "answer");
        return;
      case "me":
        if (argument) say("/me " + argument);
        else systemLine("= /me needs something to do: /me waves", "problem");
        return;
      case "who":
      case "members":
        systemLine(
          "= members of " + session.room + ": " + session.members.map((name) => (name === session.roomHost ? name + " (host)" : name)).join(", "),
          "answer",
        );
        send({ type: "members" });
        return;
      case "invite":
        if (!session.host) systemLine("= only the host can invite", "problem");
        else send({ type: "invite" });
        return;
      case "close":
        if (!session.host) {
          systemLine("= only the host can close the room; /leave leaves it", "problem");
          return;
        }
        leave();
        return;
      case "leave":
      case "quit":
      case "exit":
        leave();
        return;
      case "retry":
        retry();
        return;
      default:
        systemLine("= unknown command /" + word + ": not sent (/help lists the commands; //" + word + " sends it as text)", "problem");
    }
  }

  $("name-step").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    if (!name) return;
    session.name = name;
    showError("");
    show("room");
  });

  $("back").addEventListener("click", () => show("name"));

  function updateInvite() {
    const create = $("room-step").elements.action.value === "create";
    $("invite").disabled = create;
    $("invite-label").hidden = create;
    $("invite").hidden = create;
  }
  for (const radio of $("room-step").elements.action) radio.addEventListener("change", updateInvite);

  $("room-step").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    session.room = $("room").value.trim();
    if (!session.room) return;
    session.create = form.elements.action.value === "create";
    session.password = $("password").value || null;
    session.invite = session.create ? null : $("invite").value.trim() || null;
    session.host = false;
    session.leaving = false;
    session.reconnecting = false;
    session.retryDelay = RETRY_FIRST;
    session.epoch = null;
    session.lastSeq = 0;
    session.pending.clear();
    showError("");
    connect();
  });

  $("say").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text");
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    session.recall.push(text);
    session.recallAt = session.recall.length;
    if (text.startsWith("//")) say(text.slice(1));
    else if (text.startsWith("/")) command(text);
    else say(text);
  });

  $("text").addEventListener("keydown", (event) => {
    const input = event.target;
    const box = $("conversation");
    if (event.key === "ArrowUp" && session.recallAt > 0) {
      session.recallAt -= 1;
      input.value = session.recall[session.recallAt];
      event.preventDefault();
    } else if (event.key === "ArrowDown" && session.recallAt < session.recall.length) {
      session.recallAt += 1;
      input.value = session.recall[session.recallAt] || "";
      event.preventDefault();
    } else if (event.key === "PageUp" || event.key === "PageDown") {
      box.scrollTop += (event.key === "PageUp" ? -1 : 1) * box.clientHeight * 0.9;
      event.preventDefault();
    }
  });

  updateInvite();
  show("name");
})();
