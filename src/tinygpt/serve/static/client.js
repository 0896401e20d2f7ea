// The page's client of the server's own OpenAI-style API: no library, no build step.
const tinygpt = {
  headers(key) {
    const h = {"Content-Type": "application/json"};
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  },

  async check(response) {
    if (response.ok) return response;
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  },

  async models(key) {
    const r = await this.check(await fetch("/v1/models", {headers: this.headers(key)}));
    return (await r.json()).data.map((m) => m.id);
  },

  // POST body with stream: true; onPiece(text) for each piece of choice 0 as it arrives.
  async stream(path, body, key, signal, onPiece) {
    const r = await this.check(await fetch(path, {method: "POST", headers: this.headers(key), signal,
                                                  body: JSON.stringify({...body, stream: true})}));
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {   // server-sent events end with a blank line
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          const piece = choice.delta ? choice.delta.content : choice.text;
          if (piece) onPiece(piece, choice.index);
        }
      }
    }
  },
};
