using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SdFunctions.Jobs;
using SdFunctions.Jobs.Webhooks;

namespace SdFunctions.Functions;

/// <summary>
/// The queue triggers listen on names fixed at build time (<see cref="JobQueue.Name"/>, <see cref="WebhookQueue.Name"/>); the
/// services write to the queues their settings name. Under the host the two must agree, or every job is accepted and never
/// runs: the app does not start when they differ. (Tests that call the function classes directly use queues of their own.)
/// </summary>
internal static class TriggerQueues
{
    public static IServiceCollection RequireTriggerQueues(this IServiceCollection services)
    {
        services.AddSingleton<IValidateOptions<JobsOptions>>(new Check<JobsOptions>(o => o.QueueName, JobQueue.Name, "Jobs__QueueName"));
        services.AddSingleton<IValidateOptions<WebhookOptions>>(new Check<WebhookOptions>(o => o.QueueName, WebhookQueue.Name, "Webhooks__QueueName"));
        return services;
    }

    private sealed class Check<T>(Func<T, string> configured, string trigger, string setting) : IValidateOptions<T> where T : class
    {
        public ValidateOptionsResult Validate(string? name, T options) => configured(options) == trigger
            ? ValidateOptionsResult.Success
            : ValidateOptionsResult.Fail($"{setting} is '{configured(options)}' but the queue trigger listens on '{trigger}': jobs sent there would never run. Remove the setting or set it to '{trigger}'");
    }
}
