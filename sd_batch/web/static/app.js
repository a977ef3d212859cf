// sd web: progressive enhancement only; every page works without it.
"use strict";

// Copy buttons next to generated files.
document.querySelectorAll("button.copy").forEach((button) => {
  button.hidden = false;
  button.addEventListener("click", () => {
    const text = document.getElementById(button.dataset.copy).textContent;
    navigator.clipboard.writeText(text).then(() => { button.textContent = "copied"; });
  });
});

// The pool page: each VM's host and state, polled from the JSON endpoint. A pool that was
// "starting" when the page was made is reloaded once its start ends (the page then has the
// terminate button, or why the start failed).
const table = document.querySelector("table[data-poll]");
if (table) {
  const poll = async () => {
    const reply = await fetch(table.dataset.poll, { headers: { Accept: "application/json" } });
    if (!reply.ok) {
      document.getElementById("pool-status").textContent = "gone";
      return;
    }
    const pool = await reply.json();
    if (table.dataset.status === "starting" && pool.status !== "starting") {
      window.location.reload();
      return;
    }
    table.dataset.polled = String(Number(table.dataset.polled || 0) + 1);
    document.getElementById("pool-status").textContent = pool.status;
    const body = table.querySelector("tbody");
    body.replaceChildren(...pool.vms.map((vm) => {
      const row = document.createElement("tr");
      row.dataset.vm = vm.name;
      for (const [value, cls] of [[vm.name, ""], [vm.host, "host"], [vm.state, "state state-" + vm.state]]) {
        const cell = document.createElement("td");
        cell.textContent = value;
        if (cls) cell.className = cls;
        row.append(cell);
      }
      return row;
    }));
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}
