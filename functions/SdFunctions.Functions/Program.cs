using Microsoft.Azure.Functions.Worker.Builder;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using SdFunctions.Functions;
using SdFunctions.Jobs;

try
{
    var builder = FunctionsApplication.CreateBuilder(args);
    builder.ConfigureFunctionsWebApplication();
    builder.Services.AddGenerationJobs(builder.Configuration);
    builder.Services.AddGenerationTelemetry(builder.Configuration);
    builder.Build().Run();
    return 0;
}
catch (Exception e) when (e is SettingsException or OptionsValidationException)
{
    // A bad setting is the operator's to fix: one line that names it, not a stack trace in the host's log.
    Console.Error.WriteLine($"SdFunctions cannot start: {e.Message}");
    return 1;
}
