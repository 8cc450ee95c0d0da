"""
The terminal chat app of C{chatd-chat}: urwid widgets on Twisted's reactor.

Modules, each one concern: L{commands} parses what is typed (pure),
L{input_line} is the input line with history and completion, L{theme} the
colours, L{screens} the name and create/join screens, L{chat_screen} the chat
view, L{wording} what a failure is called, L{session} one room's conversation
(client events in, commands out), L{controller} which screen shows when, and
L{app} the urwid MainLoop and the terminal.
"""
