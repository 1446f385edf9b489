from typing import get_args

from shared.schemas import DeliveryStatusName
from shared.tables import DeliveryStatus


def test_delivery_status_names_in_the_api_are_the_stored_statuses():
    assert set(get_args(DeliveryStatusName)) == {status.value for status in DeliveryStatus}
