"""The gateway's turn, for locust: `make load` (see `bench/load.py`), or against a memsvc of your own with

    locust -f bench/locustfile.py --host http://127.0.0.1:8080

Each simulated user is one gateway worker holding one conversation. A turn reads the last 20 messages
(the context for the model), waits while "the model answers", then appends the user message and the
answer as one batch. Now and then the conversation ends and the next one starts with a new session.
`MEMSVC_API_KEY`, when set, is sent as the bearer token.
"""

import itertools
import os
import random

from locust import FastHttpUser, between, task

API = '/api/v1/chat'
NEW_SESSION_EVERY = 20  # turns, on average
_users = itertools.count()

QUESTIONS = [
    'Can you summarise the report I sent this morning?',
    'Which train goes from Munich to Vienna before nine?',
    'Write a short SQL query that counts orders per customer.',
    'What did we decide about the budget last week?',
    'Translate "see you tomorrow" into German and French.',
]


class GatewayUser(FastHttpUser):
    """One conversation at a time: read the recent history, answer, append the pair."""

    wait_time = between(float(os.environ.get('LOAD_WAIT_MIN', '0.05')), float(os.environ.get('LOAD_WAIT_MAX', '0.25')))

    def on_start(self) -> None:
        key = os.environ.get('MEMSVC_API_KEY')
        self.headers = {'Content-Type': 'application/json'}
        if key:
            self.headers['Authorization'] = f'Bearer {key}'
        self.user_number = next(_users)
        self.new_session()

    def new_session(self) -> None:
        body = {'metadata': {'user_id': f'user-{self.user_number}', 'source': 'locust'}}
        with self.client.post(f'{API}/sessions', json=body, headers=self.headers, name='create session',
                              catch_response=True) as reply:  # fmt: skip
            if reply.status_code != 201:
                reply.failure(f'create session: {reply.status_code}')
                self.session_id = f'locust-{self.user_number}-{random.getrandbits(48):x}'  # appends create it
                return
            self.session_id = reply.json()['id']

    @task
    def turn(self) -> None:
        path = f'{API}/sessions/{self.session_id}/messages'
        self.client.get(f'{path}?limit=20', headers=self.headers, name='get last 20')
        question = random.choice(QUESTIONS)
        pair = [
            {'role': 'user', 'content': question},
            {'role': 'assistant', 'content': f'Here is what I found about: {question} ' * random.randint(1, 8)},
        ]
        self.client.post(path, json=pair, headers=self.headers, name='append user+assistant pair')
        if random.randrange(NEW_SESSION_EVERY) == 0:
            self.new_session()
