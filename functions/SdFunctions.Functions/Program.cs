using Microsoft.Azure.Functions.Worker.Builder;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Functions;
using SdFunctions.Jobs;

try
{
    var builder = FunctionsApplication.CreateBuilder(args);
    builder.ConfigureFunctionsWebApplication();
    // The SDK logs every storage request at Information: an idle app would fill the console and the log bill.
    builder.Logging.AddFilter("Azure.Core", LogLevel.Warning);
    builder.Services.AddGenerationJobs(builder.Configuration).RequireTriggerQueues();
    builder.Services.AddGenerationTelemetry(builder.Configuration);
    var app = builder.Build();
    SettingsValidation.ValidateAll(app.Services); // before the host indexes the functions: a bad setting stops the app at once
    app.Run();
    return 0;
}
catch (Exception e) when (e is SettingsException or OptionsValidationException)
{
    // A bad setting is the operator's to fix: one line that names it, not a stack trace in the host's log.
    Console.Error.WriteLine($"SdFunctions cannot start: {e.Message}");
    return 1;
}
