/* hello: the smallest useful guest. One line on the serial console, exit status 0. */
#include "hvguest.h"

int main(const struct hv_boot_info *bi)
{
    (void)bi;
    printf("Hello from an hv guest!\n");
    return 0;
}
