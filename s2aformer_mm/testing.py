"""Helpers shared by the reliability tests and ``tools/reliability/soak.py``."""
import os
import signal
import subprocess
import threading
import time


class ProcessJob:
    """A subprocess whose merged stdout/stderr is collected by a thread (and copied
    to ``log`` if given), so the caller can watch it -- and the file system -- and
    SIGKILL it at a chosen moment."""

    def __init__(self, cmd, cwd, env, log=None):
        self.cmd = [str(c) for c in cmd]
        self.log = open(log, 'a') if log else None
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.log:
                self.log.write(line)
        if self.log:
            self.log.flush()

    @property
    def out(self):
        return ''.join(self.lines)

    def wait_until(self, condition, timeout=180, poll=0.001):
        """Poll ``condition()`` until it is true; fail if the job ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                self.reader.join(5)
                if condition():
                    return
                raise AssertionError(f'job ended (rc {self.proc.returncode}) before the '
                                     f'awaited moment:\n{self.out[-4000:]}')
            time.sleep(poll)
        self.kill()
        raise AssertionError(f'timed out after {timeout}s:\n{self.out[-4000:]}')

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.finish(30)

    def finish(self, timeout=240):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f'job did not end within {timeout}s:\n{self.out[-4000:]}')
        self.reader.join(10)
        return self.proc.returncode
