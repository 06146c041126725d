// Small progressive enhancements: every page works without this file.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copyTarget);
  const status = document.getElementById(button.dataset.copyStatus);
  try {
    await navigator.clipboard.writeText(source.value);
    status.textContent = "Copied to the clipboard.";
  } catch {
    source.select();
    status.textContent = "Press Ctrl+C (or ⌘C) to copy the selected URL.";
  }
});

document.addEventListener("submit", (event) => {
  const message = event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// Copy buttons are only useful with JavaScript: they are shown once it runs.
for (const button of document.querySelectorAll("[data-copy-target][hidden]")) button.hidden = false;

// After a failed submit, move focus to the list of problems so screen readers announce it.
document.querySelector(".error-summary")?.focus();

// A run in progress refreshes its report every 2 s, in place, until it is finished.
const pollId = document.querySelector("[data-poll]")?.id;
if (pollId) {
  const timer = setInterval(async () => {
    const response = await fetch(location.pathname, { headers: { accept: "text/html" } });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById(pollId);
    if (!fresh) return;
    document.getElementById(pollId).replaceWith(fresh);
    if (!fresh.hasAttribute("data-poll")) clearInterval(timer);
  }, 2000);
}
