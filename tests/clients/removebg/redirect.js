// Loaded with `node -r`: points remove.bg's client at the service named by
// REMOVEBG_ENDPOINT. The client has api.remove.bg built in and no option to change it.
"use strict";
const unirest = require("unirest");
const post = unirest.post;
const target = process.env.REMOVEBG_ENDPOINT;
if (!target) throw new Error("REMOVEBG_ENDPOINT is not set");
unirest.post = (url, ...rest) => post(url.replace("https://api.remove.bg", target), ...rest);
