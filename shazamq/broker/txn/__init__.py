"""Producer ids, idempotence and transactions: the transaction coordinator.

:class:`TransactionCoordinator` is the front; :mod:`.producer_ids` allocates producer ids
durably, :mod:`.metadata` holds a transactional id's state and allowed transitions, and
:mod:`.state_log` the ``__transaction_state`` record format.
"""

from .coordinator import TransactionCoordinator

__all__ = ["TransactionCoordinator"]
