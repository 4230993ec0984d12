// Calls remove.bg's client once per case (argv[2], a JSON list of {fn, options}) and prints
// one JSON line: what the client resolved with, or what it rejected with.
"use strict";
const removebg = require("remove.bg");

(async () => {
  const outcomes = [];
  for (const { fn, options } of JSON.parse(process.argv[2])) {
    try {
      const r = await removebg[fn](options);
      outcomes.push({
        ok: true,
        base64img: r.base64img,
        width: r.resultWidth,
        height: r.resultHeight,
        credits: r.creditsCharged,
      });
    } catch (errors) {
      outcomes.push({ ok: false, errors });
    }
  }
  console.log(JSON.stringify(outcomes));
})();
